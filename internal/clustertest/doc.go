// Package clustertest starts real nice clusters for tests: the nice-coord
// and nice-worker binaries built from this module, run as separate OS
// processes on loopback, which a test can kill (SIGKILL), restart and
// inspect through the coordinator's status and the ledger it writes. Each
// cluster has credentials of its own (nice-coord init), as a deployed one
// does. TestSurfaceCredentials runs its cluster in this process instead, to
// knock on every network-facing surface.
package clustertest
