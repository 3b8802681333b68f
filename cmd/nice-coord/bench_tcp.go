package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"time"
)

// tcpLoopbackBandwidth copies total bytes over one loopback TCP connection
// between two goroutines, runs times, and returns the median rate in bytes
// per second (the ceiling any protocol over loopback works under) and the
// median CPU time this process spent per byte, in nanoseconds.
func tcpLoopbackBandwidth(ctx context.Context, total int64, runs int) (rate, cpuNsPerByte float64, err error) {
	rates := make([]float64, 0, runs)
	cpus := make([]float64, 0, runs)
	for range runs {
		cpu0 := cpuSeconds()
		r, err := tcpCopyOnce(ctx, total)
		if err != nil {
			return 0, 0, err
		}
		rates = append(rates, r)
		cpus = append(cpus, (cpuSeconds()-cpu0)*1e9/float64(total))
	}
	sort.Float64s(rates)
	sort.Float64s(cpus)
	return rates[len(rates)/2], cpus[len(cpus)/2], nil
}

func tcpCopyOnce(ctx context.Context, total int64) (float64, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("tcp bandwidth: listening: %w", err)
	}
	defer lis.Close()
	type result struct {
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		n, err := io.CopyBuffer(io.Discard, c, make([]byte, 1<<20))
		got <- result{n, err}
	}()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", lis.Addr().String())
	if err != nil {
		return 0, fmt.Errorf("tcp bandwidth: dialing: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 1<<20)
	start := time.Now()
	for sent := int64(0); sent < total; {
		n, err := c.Write(buf[:min(int64(len(buf)), total-sent)])
		if err != nil {
			c.Close()
			return 0, fmt.Errorf("tcp bandwidth: writing: %w", err)
		}
		sent += int64(n)
	}
	c.Close()
	r := <-got
	took := time.Since(start)
	if r.err != nil && !errors.Is(r.err, io.EOF) {
		return 0, fmt.Errorf("tcp bandwidth: reading: %w", r.err)
	}
	if r.n != total {
		return 0, fmt.Errorf("tcp bandwidth: read %d bytes of %d", r.n, total)
	}
	return float64(total) / took.Seconds(), nil
}
