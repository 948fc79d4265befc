package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
	"testing/iotest"
)

const fuzzMax = 1024

// countingReader counts what bufio pulled from the input.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// consumed is how many input bytes the parser took out of br.
func consumed(cr *countingReader, br *bufio.Reader) int { return cr.n - br.Buffered() }

func checkErr(t *testing.T, err error, statuses ...int) {
	t.Helper()
	var herr *Error
	if errors.As(err, &herr) {
		for _, s := range statuses {
			if herr.Status == s {
				return
			}
		}
		t.Fatalf("error status %d not in %v: %v", herr.Status, statuses, err)
	}
}

func FuzzReadRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
		"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"\r\nGET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		cr := &countingReader{r: bytes.NewReader(in)}
		br := bufio.NewReaderSize(cr, 64)
		req, err := ReadRequestHead(br, fuzzMax)
		if n := consumed(cr, br); n > fuzzMax {
			t.Fatalf("consumed %d bytes, max %d", n, fuzzMax)
		}
		if err != nil {
			checkErr(t, err, 400, 431)
			return
		}
		if req.Size != consumed(cr, br) {
			t.Fatalf("Size %d, consumed %d", req.Size, consumed(cr, br))
		}
		if req.Chunked && req.ContentLength >= 0 {
			t.Fatal("both chunked and content-length")
		}
		// Round trip: the canonical wire form parses to the same head.
		wire := req.Append(nil)
		again, err := ReadRequestHead(bufio.NewReader(bytes.NewReader(wire)), 4*fuzzMax)
		if err != nil {
			t.Fatalf("re-parse %q: %v", wire, err)
		}
		again.Size, req.Size = 0, 0
		if !reflect.DeepEqual(req, again) {
			t.Fatalf("round trip:\n%+v\n%+v", req, again)
		}
	})
}

func FuzzReadResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 204\r\n\r\n",
		"HTTP/1.0 500 Oops\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		cr := &countingReader{r: bytes.NewReader(in)}
		br := bufio.NewReaderSize(cr, 64)
		resp, err := ReadResponseHead(br, fuzzMax)
		if n := consumed(cr, br); n > fuzzMax {
			t.Fatalf("consumed %d bytes, max %d", n, fuzzMax)
		}
		if err != nil {
			checkErr(t, err, 502)
			return
		}
		if resp.Chunked {
			// The body decoder must not panic or overrun either.
			_, _ = io.Copy(io.Discard, NewChunkedReader(br, fuzzMax, 502))
		}
		wire := resp.Append(nil)
		again, err := ReadResponseHead(bufio.NewReader(bytes.NewReader(wire)), 4*fuzzMax)
		if err != nil {
			t.Fatalf("re-parse %q: %v", wire, err)
		}
		again.Size, resp.Size = 0, 0
		if !reflect.DeepEqual(resp, again) {
			t.Fatalf("round trip:\n%+v\n%+v", resp, again)
		}
	})
}

func FuzzChunkedReader(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nT: v\r\n\r\nNEXT",
		"0\r\n\r\n",
		"5\nhello\r\n0\r\n\r\n",
		"fffffffffffffff\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 64)
		cr := NewChunkedReader(br, fuzzMax, 400)
		body, err := io.ReadAll(cr)
		if err != nil {
			checkErr(t, err, 400)
			return
		}
		// Round trip: re-encoding what was decoded decodes the same.
		var wire bytes.Buffer
		w := ChunkedWriter{W: &wire}
		_, _ = w.Write(body)
		_ = w.Close(cr.Trailer())
		cr2 := NewChunkedReader(bufio.NewReader(&wire), 4*fuzzMax, 400)
		again, err := io.ReadAll(cr2)
		if err != nil || !bytes.Equal(again, body) || !reflect.DeepEqual(cr2.Trailer(), cr.Trailer()) {
			t.Fatalf("round trip: %q %v", again, err)
		}
	})
}

// FuzzHeadBuffering checks that a head parses the same however it is
// buffered: all at once (lines are substrings of one copy of the head) or
// one byte per read (every line is read through the line buffer).
func FuzzHeadBuffering(f *testing.F) {
	for _, s := range []string{
		"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x82\x80",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	} {
		f.Add([]byte(s), 0, true)
		f.Add([]byte(s), 40, false)
	}
	f.Fuzz(func(t *testing.T, in []byte, max int, request bool) {
		max = max % (2 * fuzzMax)
		type result struct {
			head     any
			err      error
			consumed int
		}
		parse := func(r io.Reader, size int) result {
			cr := &countingReader{r: r}
			br := bufio.NewReaderSize(cr, size)
			var res result
			if request {
				h, err := ReadRequestHead(br, max)
				res.head, res.err = h, err
			} else {
				h, err := ReadResponseHead(br, max)
				res.head, res.err = h, err
			}
			res.consumed = consumed(cr, br)
			return res
		}
		whole := parse(bytes.NewReader(in), 4*fuzzMax)
		bytewise := parse(iotest.OneByteReader(bytes.NewReader(in)), 16)
		if whole.err != nil && bytewise.err != nil {
			// How far a failed read got depends on the buffering,
			// as it always did: only the error counts.
			whole.consumed, bytewise.consumed = 0, 0
		}
		if !reflect.DeepEqual(whole, bytewise) {
			t.Fatalf("buffered whole: %+v\none byte per read: %+v", whole, bytewise)
		}
	})
}
