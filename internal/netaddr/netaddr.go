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
