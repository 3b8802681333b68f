package train

import (
	"encoding/json"
	"fmt"
	"math/bits"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/mnist"
)

// What an encoded state of a given configuration can hold. A decoder and a
// receiver know the configuration they expect (or read it in the header),
// so they refuse any other size before they allocate for it.
const (
	// maxModelFloats bounds the model a configuration may describe (8 GiB
	// per buffer); far above any model this project trains.
	maxModelFloats = 1 << 31
	// headerFixedBytes covers the header's keys and its scalar fields
	// (version, position, Adam step, loss, float count) with room to spare.
	headerFixedBytes = 4 << 10
	// pointJSONBytes and epochJSONBytes bound the JSON of one history
	// entry: the longest numbers make about 100 and 215 bytes.
	pointJSONBytes = 128
	epochJSONBytes = 256
	// minHeaderBytes is the shortest JSON header: "{}".
	minHeaderBytes = 2
	// sumBytes is the sha256 that ends an encoding.
	sumBytes = 32
)

// ModelFloats is the number of float32 parameters of a model of config c,
// computed without overflow: it fails when c is invalid or describes more
// than 2^31 floats.
func ModelFloats(c flow.Config) (int, error) {
	if err := c.Validate(); err != nil {
		return 0, err
	}
	// Every value is capped just above the limit, so sums of two cannot
	// overflow and a capped product stays capped.
	half, h, l := capped(uint64(c.Dim/2)), capped(uint64(c.Hidden)), capped(uint64(c.HiddenLayers))
	// Per coupling: half->h, (l-1) times h->h, h->half, each with biases
	// (the closed form of flow.NewLayout, which loops over the layers).
	per := capped(mulCapped(half, h) + h)
	per = capped(per + mulCapped(l-1, capped(mulCapped(h, h)+h)))
	per = capped(per + mulCapped(h, half) + half)
	total := capped(mulCapped(capped(uint64(c.Couplings)), per) + capped(uint64(c.Dim)))
	if total > maxModelFloats {
		return 0, fmt.Errorf("model %+v has more than %d parameters", c, maxModelFloats)
	}
	return int(total), nil
}

// capped is v, or maxModelFloats+1 when v is larger.
func capped(v uint64) uint64 { return min(v, maxModelFloats+1) }

// mulCapped is capped(a*b) for a and b at most maxModelFloats+1.
func mulCapped(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi != 0 {
		return maxModelFloats + 1
	}
	return capped(lo)
}

// MaxHeaderLen bounds the JSON header of a state of a run with config c:
// its configuration, and a history of at most one point per LogEvery steps
// and one result per epoch over c.Epochs epochs of the full MNIST training
// set. The configuration of the state may differ from c in its number of
// epochs (a resumed run extends it), which the doubled configuration size
// covers.
func MaxHeaderLen(c Config) (int64, error) {
	if err := c.Validate(); err != nil {
		return 0, err
	}
	cfg, err := json.Marshal(c)
	if err != nil {
		return 0, fmt.Errorf("encoding the configuration: %w", err)
	}
	const capped = int64(maxHeader)
	epochs := int64(c.Epochs)
	if epochs > capped/epochJSONBytes {
		return capped, nil
	}
	steps := epochs * int64(StepsPerEpoch(mnist.TrainSize, c.Batch))
	points := steps/int64(c.LogEvery) + 1
	if points > capped/pointJSONBytes {
		return capped, nil
	}
	n := headerFixedBytes + 2*int64(len(cfg)) + points*pointJSONBytes + (epochs+1)*epochJSONBytes
	return min(n, capped), nil
}

// EncodedLenRange is the least and the most bytes that WriteTo writes for
// a state of a run with config c: a receiver that expects such a state
// refuses a transfer announcing any size outside it before allocating.
func EncodedLenRange(c Config) (lo, hi int64, err error) {
	floats, err := ModelFloats(c.Model)
	if err != nil {
		return 0, 0, fmt.Errorf("sizing a state: %w", err)
	}
	maxHeader, err := MaxHeaderLen(c)
	if err != nil {
		return 0, 0, fmt.Errorf("sizing a state: %w", err)
	}
	fixed := int64(len(stateMagic)+8+sumBytes) + 12*int64(floats)
	return fixed + minHeaderBytes, fixed + maxHeader, nil
}
