// Package nicepb holds the protocol buffer messages and gRPC services of nice,
// generated from the .proto files in this directory.
package nicepb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative ring.proto coordinator.proto
