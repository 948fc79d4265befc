package http1

import (
	"bufio"
	"errors"
	"io"
	"strings"
)

// maxChunkLine bounds a chunk-size line with its extensions.
const maxChunkLine = 4096

// ChunkedReader decodes a chunked body (RFC 9112 §7.1) from a
// *bufio.Reader, strictly: CRLF line endings, hex sizes without sign or
// whitespace, extensions of visible characters only. It stops right after
// the trailer section, leaving the next message in the reader.
type ChunkedReader struct {
	br      *bufio.Reader
	max     int
	status  int
	left    int64 // bytes left in the current chunk
	started bool
	err     error
	trailer Header
}

// NewChunkedReader decodes the chunked body at br. max bounds the trailer
// section; status is the Status of any *Error (400 for a request body, 502
// for a response body).
func NewChunkedReader(br *bufio.Reader, max, status int) *ChunkedReader {
	return &ChunkedReader{br: br, max: max, status: status}
}

// Trailer returns the trailer fields once Read has returned io.EOF.
func (c *ChunkedReader) Trailer() Header { return c.trailer }

func (c *ChunkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if c.left == 0 {
		if c.err = c.nextChunk(); c.err != nil {
			return 0, c.err
		}
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.br.Read(p)
	c.left -= int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		c.err = err
	}
	return n, c.err
}

// nextChunk reads the CRLF ending the previous chunk and the next size
// line, and the trailer after the last chunk.
func (c *ChunkedReader) nextChunk() error {
	r := &reader{br: c.br, limit: maxChunkLine, status: c.status, tooBig: c.status}
	if c.started {
		line, err := r.readLine()
		if err != nil {
			return unexpected(err)
		}
		if line != "" {
			return r.malformed("chunk data longer than its size")
		}
		r.n = 0
	}
	c.started = true
	line, err := r.readLine()
	if err != nil {
		return unexpected(err)
	}
	size, ext, _ := strings.Cut(line, ";")
	if ext != "" && !validValue(ext) {
		return r.malformed("invalid chunk extension")
	}
	n, ok := parseHex(size)
	if !ok {
		return r.malformed("invalid chunk size")
	}
	if n == 0 {
		if c.trailer, err = ReadTrailer(c.br, c.max, c.status); err != nil {
			return err
		}
		return io.EOF
	}
	c.left = n
	return nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseHex parses 1*HEXDIG, at most 15 digits so the size fits an int64.
func parseHex(s string) (int64, bool) {
	if s == "" || len(s) > 15 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isDigit(c):
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		n = n<<4 | int64(c)
	}
	return n, true
}

// ChunkedWriter encodes a chunked body, one chunk per Write.
type ChunkedWriter struct {
	W io.Writer
}

func (w ChunkedWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var hdr [20]byte
	b := appendHex(hdr[:0], uint64(len(p)))
	b = append(b, "\r\n"...)
	if _, err := w.W.Write(b); err != nil {
		return 0, err
	}
	n, err := w.W.Write(p)
	if err != nil {
		return n, err
	}
	_, err = w.W.Write([]byte("\r\n"))
	return n, err
}

// Close writes the last chunk and the trailer fields.
func (w ChunkedWriter) Close(trailer Header) error {
	b := append([]byte("0\r\n"), trailer.appendFields(nil)...)
	_, err := w.W.Write(append(b, "\r\n"...))
	return err
}

func appendHex(b []byte, v uint64) []byte {
	const digits = "0123456789abcdef"
	var tmp [16]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = digits[v&0xf]
		v >>= 4
		if v == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}
