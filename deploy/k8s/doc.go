// Package k8s holds the Kubernetes manifests of a nice cluster (a kustomize
// base and overlays, see README.md) and, in manifests_test.go, the test that
// checks them against the binaries they run. It has no code of its own.
package k8s
