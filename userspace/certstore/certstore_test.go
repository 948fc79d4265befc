package certstore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writePair writes a self-signed certificate for names and returns its pair.
func writePair(t *testing.T, dir, cn string, names ...string) Pair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		DNSNames: names, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	p := Pair{Cert: filepath.Join(dir, cn+".crt"), Key: filepath.Join(dir, cn+".key")}
	os.WriteFile(p.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(p.Key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600)
	return p
}

func cn(c *tls.Certificate) string { return c.Leaf.Subject.CommonName }

func TestSNI(t *testing.T) {
	dir := t.TempDir()
	s, err := New([]Pair{
		writePair(t, dir, "default", "default.test"),
		writePair(t, dir, "a", "a.test"),
		writePair(t, dir, "wild", "*.w.test"),
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"": "default", "a.test": "a", "A.TEST.": "a", "x.w.test": "wild", "w.test": "default",
		"y.x.w.test": "default", "unknown.test": "default", "default.test": "default",
	} {
		if got := cn(s.ForName(name)); got != want {
			t.Errorf("SNI %q: certificate %s, want %s", name, got, want)
		}
	}
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	p := writePair(t, dir, "one", "r.test")
	s, err := New([]Pair{p})
	if err != nil {
		t.Fatal(err)
	}
	before := s.ForName("r.test")
	// A broken file keeps the old certificate.
	os.WriteFile(p.Cert, []byte("not PEM"), 0o600)
	if err := s.Reload(); err == nil {
		t.Fatal("reload of a broken file succeeded")
	}
	if s.ForName("r.test") != before {
		t.Fatal("broken reload replaced the certificate")
	}
	// A new pair at the same paths replaces it.
	q := writePair(t, dir, "two", "r.test")
	os.Rename(q.Cert, p.Cert)
	os.Rename(q.Key, p.Key)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := cn(s.ForName("r.test")); got != "two" {
		t.Fatalf("after reload: %s", got)
	}
	if _, err := New(nil); err == nil {
		t.Fatal("New without pairs succeeded")
	}
}
