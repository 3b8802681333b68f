// Package ring sums a buffer of float32 across the workers of one
// generation with a ring all-reduce, over gRPC between processes or in
// memory within a test.
//
// # Using it
//
// A worker creates one GRPCTransport, registers it on its own grpc.Server
// (made with ServerOptions), and one Member on that transport:
//
//	srv := grpc.NewServer(append(ring.ServerOptions(), myOptions...)...)
//	tr := ring.NewGRPCTransport()
//	tr.RegisterServer(srv)
//	m, err := ring.NewMember(tr, ring.DefaultConfig())
//
// For every plan of the coordinator (a generation number, the ring order
// and this worker's place in it) it calls
//
//	err = m.Configure(plan.Generation, plan.Rank, plan.Peers)
//
// and then, every step, AllReduce(ctx, grads) on the one contiguous
// gradient buffer. On an error that wraps ErrRingBroken it reports to the
// coordinator and waits for the next plan: a broken generation stays
// broken. Close the member, then the transport, then stop the server.
//
// # What AllReduce promises
//
//   - Sum: every member's buf ends up holding the element-wise sum of all
//     members' bufs. The buffer of P floats is split into N chunks (the
//     first P mod N one float longer); reduce-scatter takes N-1 steps and
//     all-gather N-1 more. Chunk c is summed in a fixed order (starting at
//     member c, then c+1, ...) and then copied, so the result is bitwise the
//     same on every member and in every run with the same N and inputs.
//   - Traffic: each member sends and receives 2(N-1)/N * 4P bytes, in frames
//     of at most Config.FrameBytes (<= 4 MiB) over one stream per neighbour
//     per generation, opened by the generation's first AllReduce and reused
//     after. Frame k of a step is sent as soon as frame k of the previous
//     step arrived, so sending, receiving and adding overlap. Floats travel
//     as raw little-endian bytes (nicepb.RingFrame's data field): gRPC
//     sends them straight from buf, and they are added or copied into buf
//     straight from gRPC's receive buffers, by a codec of this package.
//   - Time: every receive has a deadline of max(Config.FrameTimeoutFloor,
//     frame bytes / Config.MinBandwidth) once a collective is under way
//     (Config.StartTimeout for its first frame, since members start when
//     their own gradients are ready). A member that fails closes both of its
//     streams, so its neighbours fail at once and the failure runs around
//     the ring: when a member dies or stalls mid-collective, every member's
//     AllReduce returns within about FrameTimeoutFloor plus a few
//     milliseconds (about 4 s by default), with a *BrokenError that wraps
//     ErrRingBroken and names the neighbour and what went wrong.
//   - Refusals: a stream or frame of an older generation is refused with
//     ErrStaleGeneration; a frame with the wrong collective, step, chunk,
//     offset or length, or a stream from an unexpected peer, with
//     ErrBadFrame. The error (a *FrameError) says which field and both
//     values. A refusal breaks the generation; the next one is unaffected.
//     Streams announced ahead of their generation wait to be accepted in a
//     bounded queue (StreamLimits: 64 for a minute by default); more are
//     refused with ErrTooManyStreams.
//   - Cancellation: if ctx ends during AllReduce the generation is broken
//     (the others cannot finish without this member) and AllReduce returns
//     an error wrapping ErrRingBroken and the context's error.
//   - Resources: once warm, AllReduce allocates nothing in the ring itself
//     (gRPC allocates a few small objects per frame); no goroutine outlives
//     Member.Close and the transport's Close. On error, buf holds no
//     meaningful values.
//   - N = 1 and P = 0 return at once. One AllReduce at a time per member.
//
// # Transports
//
// RingTransport is the seam: GRPCTransport for workers, InmemTransport (on
// an InmemNetwork, with Kill) for tests that run whole rings in one
// process, and WithFaults to drop, corrupt or fail chosen frames on either.
package ring
