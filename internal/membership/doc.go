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
//   - [Membership.Members] lists the members not declared dead, the local one
//     included, each with its [State]: [StateAlive], or [StateSuspect] when
//     this process's latest probe of it went unanswered.
//   - [Membership.Events] delivers every join, leave and metadata update, in
//     the order gossip reported them, and never blocks gossip: events wait in
//     an unbounded queue in which only consecutive updates of the same member
//     are merged (the consumer sees the newest metadata). The channel is
//     closed by [Membership.Shutdown]. Suspicion is not an event.
//   - A member that stops without leaving is reported as an [EventLeave]
//     with [CauseFailed]; under [DefaultConfig] that takes about 10 s, and a
//     live member that stops answering for up to about 8 s (a busy or
//     paused process) is at most suspected, never declared dead. See the
//     Config fields for the trade-off. A broken ring stream or gRPC session
//     is the faster signal; gossip confirms it.
//   - [Membership.Leave] first announces [Meta.Leaving] (others see an
//     [EventUpdate]), then leaves; members that heard the announcement
//     report [CauseLeft], any that missed it report [CauseFailed].
//     memberlist itself does not tell a goodbye from a crash in NotifyLeave.
//   - Gossip heals: a node with seeds checks every
//     [Config.RejoinInterval] that a member answers at each seed's address
//     (the name resolved again each time) and joins through it if not. A
//     seed that restarts under a new name, on the same address or a new
//     one, is seen by every member again, and sees every member, about 1-2 s
//     after it starts under DefaultConfig.
//   - With [Config.Creds], gossip is encrypted and authenticated with the
//     cluster's gossip key and labelled; a node with another key, or none,
//     can neither join nor be joined, and refusals are logged (a warning,
//     at most one line a second per peer host). Without, anyone who
//     reaches the port can join.
//   - Metadata larger than [MaxMetaSize] bytes is refused at [Join].
//   - Logs: memberlist's routine failure-detection chatter (suspicions,
//     failed TCP fallback probes, timeouts talking to a slow peer) and
//     anything it says after this node began to leave or shut down are
//     Debug. A member declared dead is a Warn, a goodbye an Info.
//
// [Join] starts a real memberlist node; [NewStatic] is an in-memory
// Membership whose members a test adds and removes by hand.
package membership
