package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
)

// ErrInjected is the error returned by the injectors of this file.
var ErrInjected = errors.New("injected fault")

// OpKind names an operation at which a fault can be injected.
type OpKind int

const (
	OpSave     OpKind = iota // a Store.Save call (WithFaults)
	OpList                   // a Store.List call (WithFaults)
	OpLoad                   // a Store.Load or LoadNewestValid call (WithFaults)
	OpPutChunk               // inside a bbolt save, before chunk Op.Chunk is written
	OpCommit                 // inside a bbolt save, before the transaction commits
)

func (k OpKind) String() string {
	switch k {
	case OpSave:
		return "save"
	case OpList:
		return "list"
	case OpLoad:
		return "load"
	case OpPutChunk:
		return "put-chunk"
	case OpCommit:
		return "commit"
	}
	return fmt.Sprintf("op(%d)", int(k))
}

// Op is one operation offered to an Injector.
type Op struct {
	Kind  OpKind
	Step  uint64 // the checkpoint concerned, when there is one
	Chunk int    // for OpPutChunk
}

// Injector decides whether an operation fails. It is called from whatever
// goroutine performs the operation, so it must be safe for concurrent use.
type Injector interface {
	MaybeError(op Op) error
}

// InjectorFunc adapts a function (a hook) to Injector.
type InjectorFunc func(op Op) error

// MaybeError calls f.
func (f InjectorFunc) MaybeError(op Op) error { return f(op) }

// OnKind passes only operations of the given kind on to inj.
func OnKind(kind OpKind, inj Injector) Injector {
	return InjectorFunc(func(op Op) error {
		if op.Kind != kind {
			return nil
		}
		return inj.MaybeError(op)
	})
}

// FailNth fails the nth operation it is offered (counting from 1) with
// ErrInjected, and no other. Compose with OnKind: OnKind(OpSave, FailNth(2))
// fails the second save.
func FailNth(n int64) Injector {
	var seen atomic.Int64
	return InjectorFunc(func(op Op) error {
		if seen.Add(1) == n {
			return fmt.Errorf("%v of step %d: %w", op.Kind, op.Step, ErrInjected)
		}
		return nil
	})
}

// Any fails an operation when any of injs does, consulting all of them in
// order (so counters advance alike) and returning the first error.
func Any(injs ...Injector) Injector {
	return InjectorFunc(func(op Op) error {
		var first error
		for _, inj := range injs {
			if err := inj.MaybeError(op); err != nil && first == nil {
				first = err
			}
		}
		return first
	})
}

// WithFaults wraps s so that inj is consulted before each Save, List, Load
// and LoadNewestValid; an operation it fails never reaches s.
func WithFaults(s Store, inj Injector) Store { return &faultyStore{inner: s, inj: inj} }

type faultyStore struct {
	inner Store
	inj   Injector
}

func (f *faultyStore) Save(ctx context.Context, meta Meta, blob []byte) (Info, error) {
	if err := f.inj.MaybeError(Op{Kind: OpSave, Step: meta.Step}); err != nil {
		return Info{}, fmt.Errorf("saving checkpoint at step %d: %w", meta.Step, err)
	}
	return f.inner.Save(ctx, meta, blob)
}

func (f *faultyStore) List(ctx context.Context) ([]Listing, error) {
	if err := f.inj.MaybeError(Op{Kind: OpList}); err != nil {
		return nil, fmt.Errorf("listing checkpoints: %w", err)
	}
	return f.inner.List(ctx)
}

func (f *faultyStore) Load(ctx context.Context, step uint64) (*Checkpoint, error) {
	if err := f.inj.MaybeError(Op{Kind: OpLoad, Step: step}); err != nil {
		return nil, fmt.Errorf("loading checkpoint at step %d: %w", step, err)
	}
	return f.inner.Load(ctx, step)
}

func (f *faultyStore) LoadNewestValid(ctx context.Context) (*Checkpoint, []*CorruptError, error) {
	if err := f.inj.MaybeError(Op{Kind: OpLoad}); err != nil {
		return nil, nil, fmt.Errorf("loading newest checkpoint: %w", err)
	}
	return f.inner.LoadNewestValid(ctx)
}

func (f *faultyStore) Close() error { return f.inner.Close() }
