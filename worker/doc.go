// Package worker is one training process of the distributed trainer. It
// serves the ring all-reduce and state transfer on its gRPC server, attaches
// to the coordinator with a Session stream, and follows the coordinator's
// plans: for each step it computes the gradient of its shard of the global
// batch, sums it with the other workers' over the ring, reports the digest
// of the sum, and applies the update only when the coordinator commits the
// step. When the coordinator is away it keeps its state and retries with
// backoff; when a generation changes mid-step it abandons the step, which the
// new generation redoes. Told to stop, it asks the coordinator to let it go
// and exits once its state is checkpointed (or after Config.LeaveTimeout).
//
// The protocol is Machine, a deterministic state machine (session messages,
// results of its work and clock ticks in; messages and one piece of work at
// a time out); Worker's goroutines only move messages and results between
// it, the session and the work. See docs/design.md.
//
// Its side of the joining rule: it trains only in a generation it was
// planned into and started in, and only from the very state the Start
// message names (position and digest); otherwise it answers Ready with what
// it holds and waits. The coordinator shows it as training only once its
// state digest equals the generation's (coordinator.Machine.standing).
package worker
