//go:build !amd64 || purego

package ring

func addTo(dst []float32, b []byte) { addBytesGeneric(dst, b) }
