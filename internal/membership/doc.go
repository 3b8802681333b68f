// Package membership tells every process which coordinator and workers are
// alive, by gossip (hashicorp/memberlist, SWIM failure detection).
//
// Each process announces a [Meta] record: its [Role], its worker id (stable
// across restarts of that worker), the address of its gRPC server and an
// incarnation number that grows with every process start. A process joins
// under a node name that is new on every start, so a restarted container that
// reuses an address is a new member, never a conflict with its dead former
// self; the worker id and the incarnation tell the two apart.
//
// # Promises
//
//   - [Membership.Members] lists the members currently believed alive,
//     the local one included.
//   - [Membership.Events] delivers every join, leave and metadata update, in
//     the order gossip reported them, and never blocks gossip: events wait in
//     an unbounded queue in which only consecutive updates of the same member
//     are merged (the consumer sees the newest metadata). The channel is
//     closed by [Membership.Shutdown].
//   - A member that stops without leaving is reported as an [EventLeave]
//     with [CauseFailed] within a few seconds under [DefaultConfig] on a LAN
//     (about 2.5 s for a small cluster; see the Config fields for the
//     trade-off). A broken ring stream is the faster signal; gossip
//     confirms it.
//   - [Membership.Leave] first announces [Meta.Leaving] (others see an
//     [EventUpdate]), then leaves; members that heard the announcement
//     report [CauseLeft], any that missed it report [CauseFailed].
//     memberlist itself does not tell a goodbye from a crash in NotifyLeave.
//   - Metadata larger than [MaxMetaSize] bytes is refused at [Join].
//
// [Join] starts a real memberlist node; [NewStatic] is an in-memory
// Membership whose members a test adds and removes by hand.
package membership
