package taxiiserver

import "errors"

// Sentinel errors of the server; callers test them with errors.Is.
var (
	// ErrBadBundle means a bundle file is not a STIX bundle: not JSON, or without an objects
	// list.
	ErrBadBundle = errors.New("not a STIX bundle")
	// ErrDuplicateCollection means two bundle files give the same collection and release.
	ErrDuplicateCollection = errors.New("duplicate collection")
	// ErrNoBundles means the bundle list named no file.
	ErrNoBundles = errors.New("no bundle files")
	// ErrNotLoaded means the server was asked to reload before any load.
	ErrNotLoaded = errors.New("no bundles loaded yet")
	// ErrBadParameter means a query parameter has a malformed value (answered with 400).
	ErrBadParameter = errors.New("bad query parameter")
	// ErrPageNotFound means a page-number next points past the end (MITRE mode; answered with
	// 404 as MITRE's server does).
	ErrPageNotFound = errors.New("page not found")
)
