package mnist

import (
	"errors"
	"strings"
)

// Sentinel errors. Every error Load and FindDir return about the data files
// wraps one of them (through a *FileError for a single file).
var (
	// ErrMissing: a data file, or every place that could hold them, is absent.
	ErrMissing = errors.New("MNIST data missing")
	// ErrCorrupt: a data file exists but is truncated, fails its checksum or
	// is not the expected IDX file.
	ErrCorrupt = errors.New("MNIST data corrupt")
)

// HowToGet tells a person how to obtain the MNIST files; every error about
// the files ends with it.
const HowToGet = "run `go mod download " + DataModulePath + "`, " +
	"or pass --data DIR (the folder holding the four IDX .gz files), " +
	"or set NICE_MNIST_DIR=DIR"

// FileError reports a problem with one MNIST file.
type FileError struct {
	Path    string // the file concerned
	Problem string // what is wrong, e.g. "truncated" or "checksum mismatch: got X want Y"
	Kind    error  // ErrMissing or ErrCorrupt; nil for other I/O errors
	Err     error  // underlying cause, or nil
}

func (e *FileError) Error() string {
	var b strings.Builder
	b.WriteString("mnist: ")
	b.WriteString(e.Path)
	b.WriteString(": ")
	b.WriteString(e.Problem)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.Kind == ErrCorrupt {
		b.WriteString("; replace it with a good copy: ")
	} else {
		b.WriteString("; to get the files ")
	}
	b.WriteString(HowToGet)
	return b.String()
}

// Unwrap exposes both the sentinel and the underlying cause to errors.Is/As.
func (e *FileError) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}
