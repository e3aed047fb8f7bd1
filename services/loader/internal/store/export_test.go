package store

// SetBulkChunk sets the most models one BulkWrite carries, so that tests can run the bulk path
// against FerretDB one statement at a time.
func SetBulkChunk(s *Store, n int) { s.bulkChunk = n }
