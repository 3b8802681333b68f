package netaddr

import (
	"net"
	"strings"
	"testing"
)

func TestTowardLoopbackIsLoopback(t *testing.T) {
	got, err := Toward("127.0.0.1:7000")
	if err != nil || got != "127.0.0.1" {
		t.Fatalf("Toward(127.0.0.1:7000) = %q, %v; want 127.0.0.1", got, err)
	}
}

// The address toward another of this host's addresses is an address of
// this host.
func TestTowardIsOneOfOurAddresses(t *testing.T) {
	d := Default()
	if d == "127.0.0.1" {
		t.Skip("no non-loopback IPv4 address here")
	}
	got, err := Toward(net.JoinHostPort(d, "7000"))
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.String() == got {
			return
		}
	}
	t.Errorf("Toward(%s:7000) = %s, not an address of this host (%v)", d, got, addrs)
}

func TestTowardBadTarget(t *testing.T) {
	for _, target := range []string{"no-port", ""} {
		if got, err := Toward(target); err == nil || !strings.Contains(err.Error(), "route to") {
			t.Errorf("Toward(%q) = %q, %v; want an error naming the route", target, got, err)
		}
	}
}
