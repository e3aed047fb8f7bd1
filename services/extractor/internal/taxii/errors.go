package taxii

import (
	"errors"
	"fmt"
)

// Sentinel errors. The errors the client returns wrap one of them, so that callers can test with
// errors.Is and still read the detail.
var (
	// ErrStatus means the server answered with an HTTP error status; the error is an *HTTPError.
	ErrStatus = errors.New("TAXII server answered with an error status")
	// ErrNotTAXII21 means the server answered 406 Not Acceptable to the TAXII 2.1 media type.
	ErrNotTAXII21 = errors.New("server does not speak TAXII 2.1 (406 Not Acceptable)")
	// ErrNotTAXII means a 200 answer whose media type or body is not TAXII JSON, such as an HTML
	// page from a proxy or a login portal.
	ErrNotTAXII = errors.New("answer is not TAXII JSON")
	// ErrLoop means the server sent the same page or the same next token twice.
	ErrLoop = errors.New("server repeats itself")
	// ErrPageCap means a collection had more pages than the configured cap.
	ErrPageCap = errors.New("page cap reached")
	// ErrRetired means the URL names a TAXII server that has been shut down.
	ErrRetired = errors.New("retired TAXII server")
	// ErrNoNext means the server said more pages follow but gave no next token.
	ErrNoNext = errors.New("more is true but next is missing")
	// ErrNoAPIRoot means discovery listed no API root the client could read.
	ErrNoAPIRoot = errors.New("no readable API root")
	// ErrBadDate means a date header could not be parsed.
	ErrBadDate = errors.New("unparsable date")
)

// HTTPError is an HTTP error answer. Its text names the method, the URL (without credentials),
// the status and the first bytes of the body.
type HTTPError struct {
	Method string
	URL    string
	Status int
	// StatusText is the status line's text, such as "503 Service Unavailable".
	StatusText string
	// Body is the start of the answer's body.
	Body string
}

// Error implements error.
func (e *HTTPError) Error() string {
	s := fmt.Sprintf("%s %s: %s", e.Method, e.URL, e.StatusText)
	if e.Body != "" {
		s += fmt.Sprintf(": body starts %q", e.Body)
	}
	return s
}

// Unwrap makes errors.Is(err, ErrStatus) true, and ErrNotTAXII21 for a 406.
func (e *HTTPError) Unwrap() []error {
	if e.Status == 406 {
		return []error{ErrStatus, ErrNotTAXII21}
	}
	return []error{ErrStatus}
}
