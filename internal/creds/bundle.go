package creds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"
)

// ServerName is the name every node certificate carries and every client
// verifies, whatever address it dialled (see the package documentation).
const ServerName = "nice-cluster"

// GossipLabel is put on every gossip packet and stream; with encryption on
// it is authenticated with the message, so it also keeps apart clusters
// that share a key by mistake.
const GossipLabel = "nice"

// GossipKeyBytes is the size of the gossip key: AES-256.
const GossipKeyBytes = 32

// Validity is how long a generated CA and node certificate are valid.
const Validity = 10 * 365 * 24 * time.Hour

// Bundle is a cluster's credentials as one process holds them. The zero of
// *Bundle, nil, means no credentials.
type Bundle struct {
	caPEM, certPEM, keyPEM []byte
	gossipRaw              []byte // the file's text
	gossipKey              []byte

	ca   *x509.Certificate
	pool *x509.CertPool
	cert tls.Certificate

	// Dir is the folder the bundle was loaded from ("" if generated here).
	Dir string
}

// Generate makes new cluster credentials: a CA (ECDSA P-256), a node
// certificate it signs (server and client authentication, named
// ServerName), and a random gossip key. The CA's private key is discarded.
func Generate(now time.Time) (*Bundle, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the CA key: %w", err)
	}
	id := make([]byte, 4)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("generating the CA's name: %w", err)
	}
	// An hour back: clocks of the machines of one cluster may differ a little.
	notBefore := now.Add(-time.Hour)
	caSerial, err := serial()
	if err != nil {
		return nil, err
	}
	nodeSerial, err := serial()
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               pkix.Name{Organization: []string{"nice"}, CommonName: "nice cluster CA " + hex.EncodeToString(id)},
		NotBefore:             notBefore,
		NotAfter:              now.Add(Validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("signing the CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("reading back the CA certificate: %w", err)
	}
	nodeKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the node key: %w", err)
	}
	nodeTmpl := &x509.Certificate{
		SerialNumber: nodeSerial,
		Subject:      pkix.Name{Organization: []string{"nice"}, CommonName: ServerName},
		DNSNames:     []string{ServerName},
		NotBefore:    notBefore,
		NotAfter:     now.Add(Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	nodeDER, err := x509.CreateCertificate(rand.Reader, nodeTmpl, ca, &nodeKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("signing the node certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(nodeKey)
	if err != nil {
		return nil, fmt.Errorf("encoding the node key: %w", err)
	}
	gk := make([]byte, GossipKeyBytes)
	if _, err := rand.Read(gk); err != nil {
		return nil, fmt.Errorf("generating the gossip key: %w", err)
	}
	return parse(
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: nodeDER}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		[]byte(base64.StdEncoding.EncodeToString(gk)+"\n"),
		"", now)
}

// serial is a random 127-bit certificate serial number.
func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating a serial number: %w", err)
	}
	return n, nil
}

// parse checks and assembles the four files' contents; dir only names them
// in errors.
func parse(caPEM, certPEM, keyPEM, gossipText []byte, dir string, now time.Time) (*Bundle, error) {
	b := &Bundle{caPEM: caPEM, certPEM: certPEM, keyPEM: keyPEM, gossipRaw: gossipText, Dir: dir}
	block, _ := pem.Decode(caPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fileError(dir, CAFile, "holds no PEM certificate")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fileError(dir, CAFile, "does not parse: "+err.Error())
	}
	if !ca.IsCA {
		return nil, fileError(dir, CAFile, "is not a CA certificate")
	}
	b.ca = ca
	b.pool = x509.NewCertPool()
	b.pool.AddCert(ca)
	b.cert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fileError(dir, CertFile+" and "+KeyFile, "do not form a certificate and its key: "+err.Error())
	}
	leaf := b.cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(b.cert.Certificate[0]); err != nil {
			return nil, fileError(dir, CertFile, "does not parse: "+err.Error())
		}
	}
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return nil, fileError(dir, CertFile, fmt.Sprintf("is valid from %s to %s, not now (%s): make new credentials "+
			"with `nice-coord init --force` and restart every process with them", leaf.NotBefore.Format(time.DateOnly),
			leaf.NotAfter.Format(time.DateOnly), now.Format(time.DateOnly)))
	}
	b.cert.Leaf = leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: b.pool, DNSName: ServerName, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fileError(dir, CertFile, fmt.Sprintf("does not verify against %s of the same folder (%v): "+
			"the files must all come from one init", CAFile, err))
	}
	gk, err := base64.StdEncoding.DecodeString(string(trimSpace(gossipText)))
	if err != nil {
		return nil, fileError(dir, GossipKeyFile, "is not base64: "+err.Error())
	}
	if len(gk) != GossipKeyBytes {
		return nil, fileError(dir, GossipKeyFile, fmt.Sprintf("holds a %d-byte key, want %d", len(gk), GossipKeyBytes))
	}
	b.gossipKey = gk
	return b, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// GossipKey is the key memberlist encrypts with (nil without credentials).
func (b *Bundle) GossipKey() []byte {
	if b == nil {
		return nil
	}
	return b.gossipKey
}

// Fingerprint names the cluster CA in logs: the first 8 bytes of the sha256
// of its certificate, in hex ("none" without credentials). Two processes
// with the same fingerprint belong to the same cluster.
func (b *Bundle) Fingerprint() string {
	if b == nil {
		return "none"
	}
	sum := sha256.Sum256(b.ca.Raw)
	return hex.EncodeToString(sum[:8])
}

// NotAfter is when the node certificate expires.
func (b *Bundle) NotAfter() time.Time {
	if b == nil || b.cert.Leaf == nil {
		return time.Time{}
	}
	return b.cert.Leaf.NotAfter
}
