// Package creds owns the credentials of a nice cluster: a cluster CA, one
// node certificate that every process of the cluster presents, and a key for
// gossip encryption. `nice-coord init` makes them (Generate, Write); every
// other command loads them from that folder (Load) and gets its gRPC options
// and its gossip key from the one *Bundle.
//
// # Promises
//
//   - A nil *Bundle means "no credentials": its ServerOption, DialOption and
//     GossipKey give plaintext gRPC and unencrypted gossip. Callers thread one
//     *Bundle through their configurations, so a process is secure or not as a
//     whole, never half.
//   - With a Bundle, a gRPC server accepts only clients that present a
//     certificate signed by the cluster CA (TLS 1.3, mutual authentication),
//     and a client talks only to servers that do. A connection refused at the
//     handshake is logged by the server (Bundle.ServerOption), at most once
//     a second per peer host (RefusalLimiter), so refused connections cannot
//     flood the log, and every refused source still shows.
//   - Every node certificate names ServerName, whatever the host: processes
//     reach each other by IP (a worker advertises its address on the
//     container network), by container name (the coordinator) or by
//     127.0.0.1, and those change when a container restarts. What a peer
//     proves is that it holds a key the cluster CA signed, not that it is a
//     given host. So a holder of the folder is a member of the cluster.
//   - The CA's private key is not kept: Generate signs the node certificate
//     and forgets it, so no further certificate can be made from a stolen
//     folder. Replacing the credentials means a new init (--force) and a
//     restart of every process with the new folder.
//   - Load checks what it reads: the files exist and parse, the node
//     certificate is signed by the folder's CA and matches its key, it is
//     within its validity, the gossip key has 32 bytes, and no private key is
//     readable by every user. Each error names the file and what to do.
//   - Flags.Select applies the policy of the commands: credentials when a
//     folder is given; none when --insecure is given; otherwise none only when
//     every listener is on loopback.
package creds
