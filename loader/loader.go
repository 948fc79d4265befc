// Package loader loads wsplice's BPF programs and is the only package that
// touches cilium/ebpf. Its Splicer implements dataplane.Dataplane with
// sockmap: established pairs are spliced in the kernel.
package loader

import (
	"errors"
	"net"

	"github.com/rs/zerolog"

	"github.com/wsplice/wsplice/userspace/dataplane"
)

// ErrUnsupported wraps every reason the kernel path cannot be used here.
var ErrUnsupported = errors.New("sockmap data path unsupported")

// Options tune the kernel data path.
type Options struct{}

// Splicer is the sockmap data path.
type Splicer struct{ log zerolog.Logger }

// New loads and attaches the BPF programs. On any failure it returns an
// error wrapping ErrUnsupported that says why; nothing stays loaded.
func New(log zerolog.Logger, opts Options) (*Splicer, error) {
	return nil, errors.Join(ErrUnsupported, errors.New("not implemented yet"))
}

func (s *Splicer) Name() string                                  { return "sockmap" }
func (s *Splicer) Adopt(c *net.TCPConn) (*dataplane.Conn, error) { return dataplane.NewConn(c), nil }
func (s *Splicer) Splice(client, backend *dataplane.Conn) error  { return errors.New("todo") }
func (s *Splicer) Release(c *dataplane.Conn)                     { c.Close() }
func (s *Splicer) Stats() dataplane.Stats                        { return dataplane.Stats{Dataplane: "sockmap"} }
func (s *Splicer) Close() error                                  { return nil }
