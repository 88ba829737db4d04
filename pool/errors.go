package pool

import (
	"errors"
	"fmt"
)

// Domain errors; the gRPC edge maps them to status codes.
var (
	// ErrNotFound: no such tenant or application.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: the application is already in the pool.
	ErrAlreadyExists = errors.New("already exists")
	// ErrNoUsableApp: the tenant has no application that can obtain a token now.
	ErrNoUsableApp = errors.New("no usable application")
)

// InvalidArgumentError is a request refused for one field, with the reason in
// an operator's words. It never contains key material.
type InvalidArgumentError struct {
	Field  string
	Reason string
}

func (e *InvalidArgumentError) Error() string { return e.Field + ": " + e.Reason }

// FieldViolation names the field and the problem.
func (e *InvalidArgumentError) FieldViolation() (field, reason string) { return e.Field, e.Reason }

func invalidArg(field, format string, args ...any) error {
	return &InvalidArgumentError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// PreconditionError is a request refused because of the pool's state.
type PreconditionError struct{ Reason string }

func (e *PreconditionError) Error() string { return e.Reason }
