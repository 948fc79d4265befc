// Package certstore holds the certificates of the TLS listeners: loaded
// from PEM files, chosen by SNI, replaced as a whole on reload.
package certstore

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
)

// ErrNoCertificate is returned by New without any pair.
var ErrNoCertificate = errors.New("no certificate")

// Pair names a certificate chain file and its private key file.
type Pair struct {
	Cert, Key string
}

// set is one loaded generation of certificates.
type set struct {
	certs []*tls.Certificate
	// exact maps lower-case DNS names (and IP addresses) to certificates;
	// wildcard maps the parent domain of "*.example.com" entries.
	exact, wildcard map[string]*tls.Certificate
}

// Store serves certificates by SNI. It is safe for concurrent use; Reload
// swaps the whole set at once, so a handshake sees either the old or the
// new certificates, and connections already established are untouched.
type Store struct {
	pairs []Pair
	cur   atomic.Pointer[set]
}

// New loads every pair; the first one is the default certificate.
func New(pairs []Pair) (*Store, error) {
	if len(pairs) == 0 {
		return nil, ErrNoCertificate
	}
	s := &Store{pairs: append([]Pair(nil), pairs...)}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload reads every pair again. On any error the certificates in use
// stay as they are and the error says which file failed.
func (s *Store) Reload() error {
	ns := &set{exact: make(map[string]*tls.Certificate), wildcard: make(map[string]*tls.Certificate)}
	for _, p := range s.pairs {
		c, err := tls.LoadX509KeyPair(p.Cert, p.Key)
		if err != nil {
			return fmt.Errorf("load certificate %s with key %s: %w", p.Cert, p.Key, err)
		}
		if c.Leaf == nil {
			return fmt.Errorf("load certificate %s: no parsed leaf", p.Cert)
		}
		ns.certs = append(ns.certs, &c)
		names := c.Leaf.DNSNames
		if len(names) == 0 && c.Leaf.Subject.CommonName != "" {
			names = []string{c.Leaf.Subject.CommonName}
		}
		for _, ip := range c.Leaf.IPAddresses {
			names = append(names, ip.String())
		}
		// Earlier pairs win a name claimed twice, as the default does.
		for _, n := range names {
			n = strings.ToLower(strings.TrimSuffix(n, "."))
			if parent, ok := strings.CutPrefix(n, "*."); ok {
				if _, dup := ns.wildcard[parent]; !dup {
					ns.wildcard[parent] = &c
				}
			} else if _, dup := ns.exact[n]; !dup {
				ns.exact[n] = &c
			}
		}
	}
	s.cur.Store(ns)
	return nil
}

// Certificate is tls.Config.GetCertificate: the certificate whose leaf
// names the client's server name (exactly, or by a one-label wildcard),
// else the default one.
func (s *Store) Certificate(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.ForName(hi.ServerName), nil
}

// ForName returns the certificate for a server name ("" = default).
func (s *Store) ForName(name string) *tls.Certificate {
	cs := s.cur.Load()
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if c, ok := cs.exact[name]; ok {
		return c
	}
	if _, parent, ok := strings.Cut(name, "."); ok {
		if c, ok := cs.wildcard[parent]; ok {
			return c
		}
	}
	return cs.certs[0]
}
