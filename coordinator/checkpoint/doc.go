// Package checkpoint keeps the coordinator's training checkpoints so that
// training resumes exactly after any process dies.
//
// A checkpoint is a metadata record ([Meta] plus the recorded size, chunk
// layout and SHA-256 of the state, together an [Info]) and an opaque state
// blob: parameters, Adam moments and whatever else the caller serialises.
// The package never looks inside the blob.
//
// # Promises
//
//   - A [Store.Save] is atomic: after a crash, a failed write or a cancelled
//     context, the store holds either the whole new checkpoint or nothing of
//     it, and every older checkpoint is as it was.
//   - Only the newest Keep checkpoints (by step; default 3) are retained;
//     older ones are removed in the same transaction that writes the new one.
//   - Nothing is returned as loaded unless its chunk count, every chunk's
//     size and the SHA-256 over the chunks match the metadata. Corruption is
//     reported as a [*CorruptError] that matches [ErrCorrupt] and one of
//     [ErrChecksumMismatch], [ErrMissingChunk], [ErrChunkSize] or
//     [ErrBadMetadata] under errors.Is.
//   - [Store.LoadNewestValid] returns the newest checkpoint that verifies and
//     a report of every newer one that did not, so the caller can say
//     "checkpoint at step 120 is corrupt (sha256 mismatch), resuming from
//     step 100". With nothing to resume it returns [ErrNoCheckpoint].
//
// # Implementations
//
// [OpenBolt] stores checkpoints in one bbolt file, which only one process can
// hold open for writing: a second one gets [ErrLocked] after
// [BoltOptions.LockTimeout] instead of waiting forever. Each checkpoint is a
// nested bucket named by its step as 8 big-endian bytes, so cursor order is
// step order; inside it a versioned JSON metadata record and the blob split
// into values of [BoltOptions.ChunkSize] bytes (4 MiB by default) keyed by
// chunk index.
//
// [NewMemory] is a Store in memory for tests of other packages; it can also
// damage its own contents on request to exercise recovery paths.
//
// [WithFaults] wraps any Store with an [Injector] that fails chosen
// operations, in the manner of pebble's errorfs; [BoltOptions.Injector]
// injects the same faults inside a bbolt write transaction.
//
// # Writing off the training path
//
// A [Writer] owns one goroutine that saves checkpoints in the background.
// It holds at most one pending checkpoint: submitting a newer one while a
// write is running replaces the pending one, which is reported as
// [ErrSuperseded]. Every submission's outcome and duration is reported to
// [WriterOptions.OnResult], and [Writer.Close] waits for the write in flight.
package checkpoint
