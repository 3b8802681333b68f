// Package netaddr picks the address a process advertises to others.
package netaddr

import (
	"fmt"
	"net"
)

// Default returns the first non-loopback IPv4 address of this host's
// interfaces, which in a container is its address on the container network,
// or 127.0.0.1 when there is none.
func Default() string {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "127.0.0.1"
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip4 := ipn.IP.To4(); ip4 != nil {
					return ip4.String()
				}
			}
		}
	}
	return "127.0.0.1"
}

// Join replaces the host of a listen address (":7000", "0.0.0.0:7000") by
// host, keeping the port.
func Join(host, listen string) (string, error) {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", listen, err)
	}
	return net.JoinHostPort(host, port), nil
}

// Toward returns this host's address on the route to target (host:port):
// the source address the kernel would give a packet sent there. On a host
// with several networks (a swarm task has its overlay network, the ingress
// network and a bridge; a server has several interfaces) that is the one
// peers on target's network reach it at, where Default may pick another.
// No packet is sent: "connecting" a UDP socket only looks up the route.
func Toward(target string) (string, error) {
	c, err := net.Dial("udp", target)
	if err != nil {
		return "", fmt.Errorf("finding the route to %s: %w", target, err)
	}
	defer c.Close()
	a, ok := c.LocalAddr().(*net.UDPAddr)
	if !ok || a.IP.IsUnspecified() {
		return "", fmt.Errorf("finding the route to %s: no source address (%v)", target, c.LocalAddr())
	}
	return a.IP.String(), nil
}
