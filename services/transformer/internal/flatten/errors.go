package flatten

import (
	"errors"
	"fmt"

	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/stix"
)

// ErrUnsafeKey means a key of the object would be misread by MongoDB (it holds '.' or starts
// with '$') and the safe spelling it would be given is already taken by another key.
var ErrUnsafeKey = errors.New("unsafe key")

// ErrTooLarge means the object is larger than the configured limit.
var ErrTooLarge = errors.New("object too large")

// ErrMalformed means a property the mapping reads has the wrong JSON type or a bad value.
var ErrMalformed = errors.New("malformed property")

// Error is a rejection of one object: the dead-letter kind and the cause.
type Error struct {
	Kind bus.Kind
	Err  error
}

// Error returns the cause in words.
func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns the cause, so that callers can test it with errors.Is.
func (e *Error) Unwrap() error { return e.Err }

func reject(kind bus.Kind, format string, args ...any) *Error {
	return &Error{Kind: kind, Err: fmt.Errorf(format, args...)}
}

// KindOf returns the dead-letter kind of a rejection error, classifying the stix package's
// sentinels, and KindInvalid for any other error.
func KindOf(err error) bus.Kind {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Kind
	case errors.Is(err, stix.ErrNotJSON):
		return bus.KindNotJSON
	default:
		return bus.KindInvalid
	}
}
