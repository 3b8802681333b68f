//go:build !amd64 || purego

package vec

func adamVector(p, g, m, v []float32, k *AdamConsts) int { return 0 }

func sumSquaresVector(g []float32, s *[4]float64) int { return 0 }
