package membership

import (
	"encoding/json"
	"fmt"
)

// MaxMetaSize is the largest encoded metadata gossip carries (memberlist's
// limit).
const MaxMetaSize = 512

// Role is what a process does in the cluster.
type Role string

const (
	RoleCoordinator Role = "coordinator"
	RoleWorker      Role = "worker"
)

// metaVersion lets a future format be told apart; decoders refuse others.
const metaVersion = 1

// Meta is what a member announces about itself.
type Meta struct {
	Role Role `json:"role"`
	// WorkerID identifies a worker across restarts; empty for the coordinator.
	WorkerID string `json:"worker_id,omitempty"`
	// GRPCAddr is where the member's gRPC server listens (host:port).
	GRPCAddr string `json:"grpc_addr"`
	// Incarnation grows with every process start (Join uses the start time
	// in nanoseconds when it is 0), so a restarted worker is recognisably newer.
	Incarnation uint64 `json:"incarnation"`
	// Leaving is set by Leave just before the member goes, so others can
	// tell a goodbye from a crash (memberlist itself does not say which).
	Leaving bool `json:"leaving,omitempty"`
}

type metaRecord struct {
	Version int `json:"v"`
	Meta
}

// Validate checks the fields every member must carry.
func (m Meta) Validate() error {
	switch {
	case m.Role != RoleCoordinator && m.Role != RoleWorker:
		return fmt.Errorf("%w: role %q is neither %q nor %q", ErrInvalidMeta, m.Role, RoleCoordinator, RoleWorker)
	case m.Role == RoleWorker && m.WorkerID == "":
		return fmt.Errorf("%w: a worker needs a worker id", ErrInvalidMeta)
	case m.GRPCAddr == "":
		return fmt.Errorf("%w: no gRPC address", ErrInvalidMeta)
	}
	return nil
}

// Encode validates m and returns its wire form, at most MaxMetaSize bytes.
func (m Meta) Encode() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(metaRecord{Version: metaVersion, Meta: m})
	if err != nil {
		return nil, fmt.Errorf("encoding node metadata: %w", err)
	}
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("%w: %d bytes encoded, the limit is %d", ErrMetaTooLarge, len(b), MaxMetaSize)
	}
	return b, nil
}

// DecodeMeta parses metadata written by Encode.
func DecodeMeta(b []byte) (Meta, error) {
	var r metaRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return Meta{}, fmt.Errorf("%w: %v", ErrInvalidMeta, err)
	}
	if r.Version != metaVersion {
		return Meta{}, fmt.Errorf("%w: version %d, this build reads %d", ErrInvalidMeta, r.Version, metaVersion)
	}
	return r.Meta, nil
}
