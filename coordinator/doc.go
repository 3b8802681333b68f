// Package coordinator runs the distributed trainer's coordinator: workers
// attach to it over gRPC Session streams and find it by gossip; it plans
// generations (ring order, ranks, the state each generation starts from),
// commits each step once every member reported the same reduced-gradient
// digest, has steps redone by a new generation when a member dies before the
// commit, collects epoch evaluations, takes checkpoints into bbolt off the
// training path, lets stopping workers go once their state is stored, and
// answers status queries. The design, the protocol and the handling of each
// failure are in docs/design.md.
//
// The step and generation logic is Machine, a deterministic state machine fed
// with events (attach, detach, ready, report, eval, ring failure, leave,
// stored, tick) that returns the messages to send and the work to do; Server
// does the I/O around it and reads nothing of the machine but its outputs
// and its View. Machine is tested alone (machine_test.go), together with the
// workers' machines under a seeded scheduler (internal/sim), and Server with
// real gRPC and real processes (internal/clustertest).
//
// The joining rule, enforced in one place (Machine.standing): a worker is a
// member of a generation, and shown as "training" with a rank, only while it
// is in the current generation AND its state digest was shown equal to the
// generation's (set only by Machine.admit, when every member's Ready names
// the generation's state), in every phase: idle, preparing, running,
// holding and finished. A newcomer, or a worker restarted under the same id,
// is "waiting" until a later generation admits it.
//
// What else it promises (docs/design.md, "What nice promises"): a step takes
// effect only when committed; the global batch of a step never depends on
// the number of workers; no sample of an epoch is skipped or used twice
// (checked at every commit: the members' shards must partition the batch);
// every membership change starts a new generation, numbered above every
// generation an attached worker has seen, and messages of other generations
// are ignored; a restarted coordinator resumes from its newest checkpoint
// that verifies; a worker that asks to leave is dismissed only once a stored
// checkpoint holds its state.
package coordinator
