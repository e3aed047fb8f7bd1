package store

// SetBulkChunk sets the most models one BulkWrite carries, so that tests can run the bulk path
// against FerretDB one statement at a time.
func SetBulkChunk(s *Store, n int) { s.bulkChunk = n }

// SetBeforeCreate sets a function run before each index creation, so that a test can create
// the index from elsewhere first, as a loader starting at the same time would.
func SetBeforeCreate(s *Store, f func(name string)) { s.beforeCreate = f }
