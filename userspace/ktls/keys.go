package ktls

import (
	"bufio"
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"sync"
)

// suite is what the kernel needs to know of a TLS 1.3 cipher suite.
type suite struct {
	id     uint16
	name   string
	cipher uint16 // TLS_CIPHER_* of linux/tls.h
	keyLen int
	hash   func() hash.Hash
}

var suites = []suite{
	{tls.TLS_AES_128_GCM_SHA256, "TLS_AES_128_GCM_SHA256", cipherAESGCM128, 16, sha256.New},
	{tls.TLS_AES_256_GCM_SHA384, "TLS_AES_256_GCM_SHA384", cipherAESGCM256, 32, sha512.New384},
	{tls.TLS_CHACHA20_POLY1305_SHA256, "TLS_CHACHA20_POLY1305_SHA256", cipherChaCha20Poly1305, 32, sha256.New},
}

func suiteByID(id uint16) (suite, bool) {
	for _, s := range suites {
		if s.id == id {
			return s, true
		}
	}
	return suite{}, false
}

// directionKeys are the write key and IV of one direction.
type directionKeys struct {
	key, iv []byte
}

// expandLabel is HKDF-Expand-Label of RFC 8446 §7.1 with an empty context.
func expandLabel(h func() hash.Hash, secret []byte, label string, length int) ([]byte, error) {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = binary.BigEndian.AppendUint16(info, uint16(length))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0) // empty context
	return hkdf.Expand(h, secret, string(info), length)
}

// trafficKeys derives a direction's key and IV from its traffic secret
// (RFC 8446 §7.3).
func trafficKeys(s suite, secret []byte) (directionKeys, error) {
	key, err := expandLabel(s.hash, secret, "key", s.keyLen)
	if err != nil {
		return directionKeys{}, fmt.Errorf("derive key: %w", err)
	}
	iv, err := expandLabel(s.hash, secret, "iv", 12)
	if err != nil {
		return directionKeys{}, fmt.Errorf("derive iv: %w", err)
	}
	return directionKeys{key: key, iv: iv}, nil
}

// Key log labels of the first application traffic secrets (NSS key log
// format, which is what crypto/tls writes).
const (
	labelClientTraffic = "CLIENT_TRAFFIC_SECRET_0"
	labelServerTraffic = "SERVER_TRAFFIC_SECRET_0"
)

// keyLog takes the key log lines of one connection and keeps the two
// application traffic secrets.
type keyLog struct {
	mu             sync.Mutex
	client, server []byte
}

// Write implements io.Writer for tls.Config.KeyLogWriter: crypto/tls writes
// one whole line per call.
func (k *keyLog) Write(p []byte) (int, error) {
	sc := bufio.NewScanner(bytes.NewReader(p))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) != 3 {
			continue
		}
		secret, err := hex.DecodeString(string(f[2]))
		if err != nil {
			continue
		}
		k.mu.Lock()
		switch string(f[0]) {
		case labelClientTraffic:
			k.client = secret
		case labelServerTraffic:
			k.server = secret
		}
		k.mu.Unlock()
	}
	return len(p), nil
}

func (k *keyLog) secrets() (client, server []byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.client, k.server
}

// TrafficKeys returns the write key and IV that a TLS 1.3 traffic secret
// gives for a cipher suite (RFC 8446 §7.3). Tests use it to speak for a
// peer.
func TrafficKeys(cipherSuite uint16, secret []byte) (key, iv []byte, err error) {
	s, ok := suiteByID(cipherSuite)
	if !ok {
		return nil, nil, fmt.Errorf("%w: cipher suite %#04x", ErrUnsupported, cipherSuite)
	}
	k, err := trafficKeys(s, secret)
	return k.key, k.iv, err
}
