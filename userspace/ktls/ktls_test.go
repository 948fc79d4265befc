package ktls

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"reflect"
	"testing"
	"time"
)

const testTimeout = 10 * time.Second

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ktls.test"},
		DNSNames:     []string{"ktls.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// pair runs a handshake between a Go client and a Session on loopback.
func pair(t *testing.T, clientMax uint16) (*Session, *tls.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t)}, MinVersion: tls.VersionTLS12}
	type result struct {
		s   *Session
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		s := Server(c.(*net.TCPConn), cfg)
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		done <- result{s, s.Handshake(ctx)}
	}()
	cc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, MaxVersion: clientMax})
	if err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { cc.Close(); r.s.TLS.NetConn().Close() })
	return r.s, cc
}

// goSeq reads crypto/tls's own sequence number of one direction ("in" or
// "out"), to check the counting against it. Test only: it depends on
// crypto/tls internals and fails loudly if they change.
func goSeq(t *testing.T, c *tls.Conn, dir string) uint64 {
	t.Helper()
	f := reflect.ValueOf(c).Elem().FieldByName(dir)
	if !f.IsValid() || !f.FieldByName("seq").IsValid() {
		t.Fatalf("crypto/tls internals changed: no %s.seq", dir)
	}
	seq := f.FieldByName("seq")
	var b [8]byte
	for i := range b {
		b[i] = byte(seq.Index(i).Uint())
	}
	return binary.BigEndian.Uint64(b[:])
}

func aead(t *testing.T, s suite, key []byte) cipher.AEAD {
	t.Helper()
	if s.cipher == cipherChaCha20Poly1305 {
		// Go negotiates ChaCha20 only with clients that prefer it (no
		// AES hardware); the standard library has no public AEAD for it.
		t.Skip("ChaCha20-Poly1305 negotiated: no AEAD to check it with")
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func nonce(iv []byte, seq uint64) []byte {
	n := bytes.Clone(iv)
	for i := 0; i < 8; i++ {
		n[4+i] ^= byte(seq >> (56 - 8*i))
	}
	return n
}

// TestKeySchedule checks, without kernel TLS, that the keys and sequence
// numbers Enable would install are the ones the session uses: the server
// decrypts the client's first record from the socket with the derived
// client key, and the client reads a record the server sealed itself.
func TestKeySchedule(t *testing.T) {
	s, cc := pair(t, 0)
	st := s.TLS.ConnectionState()
	if st.Version != tls.VersionTLS13 {
		t.Fatalf("version %s", tls.VersionName(st.Version))
	}
	su, ok := suiteByID(st.CipherSuite)
	if !ok {
		t.Fatalf("suite %s unknown", tls.CipherSuiteName(st.CipherSuite))
	}
	r, w := s.Conn.Records()
	if gi, gw := goSeq(t, s.TLS, "in"), goSeq(t, s.TLS, "out"); gi != r-s.rxMark || gw != w-s.txMark {
		t.Fatalf("sequence numbers: crypto/tls in=%d out=%d, counted %d %d", gi, gw, r-s.rxMark, w-s.txMark)
	}
	if !s.Conn.atBoundary() {
		t.Fatal("not at a record boundary after the handshake")
	}
	csec, ssec := s.log.secrets()
	rx, err := trafficKeys(su, csec)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := trafficKeys(su, ssec)
	if err != nil {
		t.Fatal(err)
	}
	// Client → server, read raw from the socket: nothing may hide in Go.
	msg := make([]byte, 3000)
	rand.Read(msg)
	if _, err := cc.Write(msg); err != nil {
		t.Fatal(err)
	}
	raw := s.Conn.TCPConn
	raw.SetDeadline(time.Now().Add(testTimeout))
	var hdr [5]byte
	if _, err := io.ReadFull(raw, hdr[:]); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
	if _, err := io.ReadFull(raw, body); err != nil {
		t.Fatal(err)
	}
	plain, err := aead(t, su, rx.key).Open(nil, nonce(rx.iv, r-s.rxMark), body, hdr[:])
	if err != nil {
		t.Fatalf("decrypt the client's first record with the derived key: %v", err)
	}
	// Go sizes early records to one segment: the record holds a prefix.
	if len(plain) < 2 || plain[len(plain)-1] != RecordApplicationData || !bytes.HasPrefix(msg, plain[:len(plain)-1]) {
		t.Fatalf("client record decrypted to %d bytes, not the message's start", len(plain))
	}
	// Server → client, sealed here with the derived server key.
	reply := []byte("sealed by the test with SERVER_TRAFFIC_SECRET_0")
	inner := append(bytes.Clone(reply), RecordApplicationData)
	out := []byte{RecordApplicationData, 3, 3, 0, 0}
	binary.BigEndian.PutUint16(out[3:], uint16(len(inner)+16))
	out = aead(t, su, tx.key).Seal(out, nonce(tx.iv, w-s.txMark), inner, out[:5])
	if _, err := raw.Write(out); err != nil {
		t.Fatal(err)
	}
	cc.SetDeadline(time.Now().Add(testTimeout))
	got := make([]byte, len(reply))
	if _, err := io.ReadFull(cc, got); err != nil {
		t.Fatalf("client reads the record sealed with the derived key: %v", err)
	}
	if !bytes.Equal(got, reply) {
		t.Fatalf("client read %q", got)
	}
}

// TestExpandLabel checks HKDF-Expand-Label against RFC 8448 §3 (simple
// 1-RTT handshake): the server's handshake traffic secret gives the key
// and IV listed there.
func TestExpandLabel(t *testing.T) {
	secret := unhex(t, "b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38")
	k, err := trafficKeys(suites[0], secret)
	if err != nil {
		t.Fatal(err)
	}
	if want := unhex(t, "3fce516009c21727d0f2e4e86ee403bc"); !bytes.Equal(k.key, want) {
		t.Errorf("key %x, want %x", k.key, want)
	}
	if want := unhex(t, "5d313eb2671276ee13000b30"); !bytes.Equal(k.iv, want) {
		t.Errorf("iv %x, want %x", k.iv, want)
	}
	for _, s := range suites {
		k, err := trafficKeys(s, make([]byte, s.hash().Size()))
		if err != nil || len(k.key) != s.keyLen || len(k.iv) != 12 {
			t.Errorf("%s: key %d bytes, iv %d, err %v", s.name, len(k.key), len(k.iv), err)
		}
		if n := len(cryptoInfo(s, k, 0)); n != map[uint16]int{cipherAESGCM128: 40, cipherAESGCM256: 56, cipherChaCha20Poly1305: 56}[s.cipher] {
			t.Errorf("%s: crypto_info %d bytes", s.name, n)
		}
	}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b := make([]byte, len(s)/2)
	for i := range b {
		var v byte
		for _, c := range s[2*i : 2*i+2] {
			v <<= 4
			switch {
			case c >= '0' && c <= '9':
				v |= byte(c - '0')
			default:
				v |= byte(c-'a') + 10
			}
		}
		b[i] = v
	}
	return b
}

// requireKTLS skips without kernel TLS, unless it must be there: with
// WSPLICE_REQUIRE_PRIV=1 on a kernel that has the tls module (the VM of
// scripts/vm-test.sh), a missing kTLS is a failure.
func requireKTLS(t *testing.T) {
	t.Helper()
	err := Available()
	if err == nil {
		return
	}
	if os.Getenv("WSPLICE_REQUIRE_PRIV") == "1" && ModulePresent() {
		t.Fatalf("kernel TLS required (WSPLICE_REQUIRE_PRIV=1, tls module present) but unavailable: %v", err)
	}
	t.Skipf("kernel TLS unavailable (%v); run on a kernel with CONFIG_TLS as root, e.g. `make vm-test`", err)
}

// TestEnable installs a session in the kernel and moves random data both
// ways through the now-plaintext socket; then the client's close_notify
// shows as an alert record, not as data.
func TestEnable(t *testing.T) {
	requireKTLS(t)
	probe, err := Probe()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel ciphers: %v", probe)
	s, cc := pair(t, 0)
	name, err := s.Enable()
	if err != nil {
		t.Fatalf("Enable: %v", err)
	}
	t.Logf("kernel TLS with %s", name)
	raw := s.Conn.TCPConn
	raw.SetDeadline(time.Now().Add(testTimeout))
	cc.SetDeadline(time.Now().Add(testTimeout))
	for _, size := range []int{1, 100, 16 << 10, 200 << 10} {
		up := make([]byte, size)
		rand.Read(up)
		go cc.Write(up)
		got := make([]byte, size)
		if _, err := io.ReadFull(raw, got); err != nil || !bytes.Equal(got, up) {
			t.Fatalf("client→server %d bytes: err %v, equal %v", size, err, bytes.Equal(got, up))
		}
		down := make([]byte, size)
		rand.Read(down)
		go raw.Write(down)
		if _, err := io.ReadFull(cc, got); err != nil || !bytes.Equal(got, down) {
			t.Fatalf("server→client %d bytes: err %v, equal %v", size, err, bytes.Equal(got, down))
		}
	}
	if err := cc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_, err = raw.Read(make([]byte, 10))
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("read over close_notify: %v, want an error (kernel refuses control records without cmsg)", err)
	}
	typ, body, err := ReadRecord(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !IsCloseNotify(typ, body) {
		t.Fatalf("record type %d body %x, want close_notify", typ, body)
	}
}

// TestEnableTLS12 leaves a TLS 1.2 session to Go, cleanly.
func TestEnableTLS12(t *testing.T) {
	s, cc := pair(t, tls.VersionTLS12)
	if _, err := s.Enable(); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Enable on TLS 1.2: %v, want ErrUnsupported", err)
	}
	s.Passthrough()
	go cc.Write([]byte("still works"))
	s.TLS.SetDeadline(time.Now().Add(testTimeout))
	got := make([]byte, 11)
	if _, err := io.ReadFull(s.TLS, got); err != nil || string(got) != "still works" {
		t.Fatalf("read %q, %v", got, err)
	}
}
