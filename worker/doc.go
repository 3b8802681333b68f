// Package worker is one training process of the distributed trainer. It
// serves the ring all-reduce and state transfer on its gRPC server, attaches
// to the coordinator with a Session stream, and follows the coordinator's
// plans: for each step it computes the gradient of its shard of the global
// batch, sums it with the other workers' over the ring, reports the digest
// of the sum, and applies the update only when the coordinator commits the
// step. When the coordinator is away it keeps its state and retries with
// backoff; when a generation changes mid-step it abandons the step, which the
// new generation redoes.
package worker
