package http1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// maxLeadingEmptyLines is how many empty lines before a request line are
// skipped (RFC 9112 §2.2: a server SHOULD ignore at least one, for clients
// that send an extra CRLF after a POST body).
const maxLeadingEmptyLines = 4

// reader reads CRLF-terminated lines from br without consuming more than
// limit bytes in all.
type reader struct {
	br     *bufio.Reader
	limit  int
	n      int // bytes consumed so far
	status int // status for malformed input (400 request, 502 response)
	tooBig int // status when limit is exceeded
	line   []byte
	// head is a copy, taken once at the first line, of the bytes then
	// buffered from that line on (within the limit, and up to the end of
	// the head when it is in sight), less what was consumed since. A
	// line that lies whole in it is returned as a substring: one
	// allocation per head instead of one per line. Lines that do not
	// are read as before, from br.
	head   string
	copied bool
}

func (r *reader) malformed(format string, args ...any) error {
	return &Error{Status: r.status, Reason: fmt.Sprintf(format, args...)}
}

// readLine returns the next line without its CRLF. The returned string is a
// copy. It returns io.EOF when the reader ends before the first byte of the
// first line, io.ErrUnexpectedEOF when it ends inside the head.
func (r *reader) readLine() (string, error) {
	if line, ok := r.lineFromHead(); ok {
		return r.finishString(line)
	}
	r.line = r.line[:0]
	for {
		if r.br.Buffered() == 0 {
			if _, err := r.br.Peek(1); err != nil {
				if errors.Is(err, io.EOF) {
					if r.n == 0 {
						return "", io.EOF
					}
					return "", io.ErrUnexpectedEOF
				}
				return "", err
			}
		}
		buf, _ := r.br.Peek(r.br.Buffered())
		room := r.limit - r.n
		window := buf[:min(len(buf), room)]
		if i := indexLF(window); i >= 0 {
			if len(r.line) == 0 && !r.copied {
				r.copied = true
				r.head = string(window[:headEnd(window)])
				line, _ := r.lineFromHead() // i < len(r.head): see headEnd
				return r.finishString(line)
			}
			r.line = append(r.line, window[:i+1]...)
			_, _ = r.br.Discard(i + 1)
			r.n += i + 1
			return r.finishLine()
		}
		if len(buf) >= room {
			return "", &Error{Status: r.tooBig, Reason: "message head too large"}
		}
		r.line = append(r.line, window...)
		_, _ = r.br.Discard(len(window))
		r.n += len(window)
	}
}

// headEnd is the length of the head's start in b: up to and including
// the first empty line ("\r\n\r\n"), or all of b when none is in it. It
// is past b's first LF, which is at or before that empty line's.
func headEnd(b []byte) int {
	if i := bytes.Index(b, crlfcrlf); i >= 0 {
		return i + len(crlfcrlf)
	}
	return len(b)
}

var crlfcrlf = []byte("\r\n\r\n")

// lineFromHead consumes and returns the next line, LF included, if it
// lies whole in r.head (see reader); else it drops r.head.
func (r *reader) lineFromHead() (string, bool) {
	if r.head == "" {
		return "", false
	}
	window := r.head[:min(len(r.head), r.limit-r.n)]
	i := strings.IndexByte(window, '\n')
	if i < 0 {
		r.head = ""
		return "", false
	}
	line := r.head[:i+1]
	r.head = r.head[i+1:]
	_, _ = r.br.Discard(i + 1)
	r.n += i + 1
	return line, true
}

// linesInSight is an upper bound of the lines left in r.head, for sizing.
func (r *reader) linesInSight() int { return strings.Count(r.head, "\n") }

func indexLF(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

// finishString is finishLine for a line taken from r.head.
func (r *reader) finishString(l string) (string, error) {
	if len(l) < 2 || l[len(l)-2] != '\r' {
		return "", r.malformed("bare LF in message head")
	}
	l = l[:len(l)-2]
	if strings.IndexByte(l, '\r') >= 0 {
		return "", r.malformed("bare CR in message head")
	}
	return l, nil
}

// finishLine checks the CRLF policy (see the package comment) and strips it.
func (r *reader) finishLine() (string, error) {
	l := r.line
	if len(l) < 2 || l[len(l)-2] != '\r' {
		return "", r.malformed("bare LF in message head")
	}
	l = l[:len(l)-2]
	for _, c := range l {
		if c == '\r' {
			return "", r.malformed("bare CR in message head")
		}
	}
	return string(l), nil
}

// ReadRequestHead reads a request head of at most max bytes (max <= 0 means
// DefaultMaxHeaderBytes) from br and consumes nothing past it: bytes after
// the head stay in br. It returns io.EOF if br ends before the first byte,
// io.ErrUnexpectedEOF if it ends inside the head, the reader's error as is,
// or an *Error with Status 431 or 400.
func ReadRequestHead(br *bufio.Reader, max int) (*RequestHead, error) {
	if max <= 0 {
		max = DefaultMaxHeaderBytes
	}
	r := &reader{br: br, limit: max, status: 400, tooBig: 431}
	line, err := r.readLine()
	for skipped := 0; err == nil && line == "" && skipped < maxLeadingEmptyLines; skipped++ {
		line, err = r.readLine()
	}
	if err != nil {
		return nil, err
	}
	req := &RequestHead{ContentLength: -1}
	if err := parseRequestLine(r, line, req); err != nil {
		return nil, err
	}
	if req.Header, err = readFields(r); err != nil {
		return nil, err
	}
	req.Size = r.n
	if err := checkRequestHeader(r, req); err != nil {
		return nil, err
	}
	return req, nil
}

func parseRequestLine(r *reader, line string, req *RequestHead) error {
	method, rest, ok1 := strings.Cut(line, " ")
	target, version, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return r.malformed("malformed request line")
	}
	if !IsToken(method) {
		return r.malformed("invalid method")
	}
	var ok bool
	if req.Major, req.Minor, ok = parseVersion(version); !ok {
		return r.malformed("malformed HTTP version")
	}
	if req.Major != 1 {
		return r.malformed("unsupported HTTP version")
	}
	if !validTarget(method, target) {
		return r.malformed("invalid request target")
	}
	req.Method, req.Target = method, target
	return nil
}

// parseVersion parses "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3).
func parseVersion(v string) (major, minor int, ok bool) {
	if len(v) != 8 || v[:5] != "HTTP/" || !isDigit(v[5]) || v[6] != '.' || !isDigit(v[7]) {
		return 0, 0, false
	}
	return int(v[5] - '0'), int(v[7] - '0'), true
}

// validTarget accepts the four request-target forms of RFC 9112 §3.2 with
// visible ASCII only: origin-form, absolute-form, authority-form for
// CONNECT and asterisk-form for OPTIONS.
func validTarget(method, t string) bool {
	if t == "" {
		return false
	}
	for i := 0; i < len(t); i++ {
		if t[i] <= ' ' || t[i] >= 0x7f || t[i] == '#' {
			return false
		}
	}
	switch {
	case method == "CONNECT":
		return !strings.ContainsAny(t, "/?") && strings.Contains(t, ":")
	case t == "*":
		return method == "OPTIONS"
	case t[0] == '/':
		return true
	default:
		scheme, rest, ok := strings.Cut(t, "://")
		if !ok || !(strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https")) {
			return false
		}
		// The authority replaces the Host field (RFC 9112 §3.2.2), so it
		// is held to the same rules: a valid host, no userinfo (RFC 9110
		// §4.2.4 forbids it in http URIs).
		authority := rest
		if i := strings.IndexAny(rest, "/?"); i >= 0 {
			authority = rest[:i]
		}
		return authority != "" && validHost(authority)
	}
}

// readFields reads header fields up to and including the empty line.
func readFields(r *reader) (Header, error) {
	var h Header
	for {
		line, err := r.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if line == "" {
			return h, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			// obs-fold (RFC 9112 §5.2), or whitespace before the
			// first field (§2.2): both are rejected.
			return nil, r.malformed("obsolete line folding")
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, r.malformed("header line without colon")
		}
		if !IsToken(name) {
			// Covers whitespace between name and colon (§5.1).
			return nil, r.malformed("invalid header name")
		}
		value = strings.Trim(value, " \t")
		if !validValue(value) {
			return nil, r.malformed("invalid character in header value")
		}
		if h == nil {
			// Sized once from the lines in sight (the empty line
			// ends them), not grown field by field.
			h = make(Header, 0, max(r.linesInSight(), 4))
		}
		h = append(h, Field{Name: name, Value: value})
	}
}

func checkRequestHeader(r *reader, req *RequestHead) error {
	hosts, host := 0, ""
	for _, f := range req.Header {
		if strings.EqualFold(f.Name, "Host") {
			if hosts == 0 {
				host = f.Value
			}
			hosts++
		}
	}
	switch {
	case hosts > 1:
		return r.malformed("multiple Host fields")
	case hosts == 0 && req.Minor >= 1:
		return r.malformed("missing Host field")
	case hosts == 1:
		if !validHost(host) {
			return r.malformed("invalid Host field")
		}
		req.Host = host
	}
	var err error
	req.ContentLength, req.Chunked, err = framing(r, req.Header, req.Minor)
	return err
}

// framing applies RFC 9112 §6 with no leniency: Transfer-Encoding must be
// exactly "chunked", may not come with Content-Length, and is not allowed in
// HTTP/1.0; Content-Length must be digits, and repeated values must agree.
func framing(r *reader, h Header, minor int) (int64, bool, error) {
	cl := int64(-1)
	if h.Has("Content-Length") {
		vals := h.Tokens("Content-Length")
		if len(vals) == 0 {
			return 0, false, r.malformed("empty Content-Length")
		}
		for i, v := range vals {
			if i > 0 && v != vals[0] {
				return 0, false, r.malformed("conflicting Content-Length values")
			}
		}
		n, ok := parseLength(vals[0])
		if !ok {
			return 0, false, r.malformed("invalid Content-Length")
		}
		cl = n
	}
	if !h.Has("Transfer-Encoding") {
		return cl, false, nil
	}
	switch codings := h.Tokens("Transfer-Encoding"); {
	case cl >= 0:
		return 0, false, r.malformed("both Content-Length and Transfer-Encoding")
	case minor == 0:
		return 0, false, r.malformed("Transfer-Encoding in HTTP/1.0")
	case len(codings) != 1 || !strings.EqualFold(codings[0], "chunked"):
		return 0, false, r.malformed("unsupported Transfer-Encoding")
	}
	return -1, true, nil
}

// parseLength parses 1*DIGIT up to 2^62.
func parseLength(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// ReadResponseHead reads a response head of at most max bytes from br and
// consumes nothing past it. Errors are as for ReadRequestHead, except that
// an *Error always has Status 502: a malformed response is the backend's
// fault. The framing rules are the request's; 1xx, 204 and 304 responses
// keep ContentLength and Chunked as sent, see Bodyless.
func ReadResponseHead(br *bufio.Reader, max int) (*ResponseHead, error) {
	if max <= 0 {
		max = DefaultMaxHeaderBytes
	}
	r := &reader{br: br, limit: max, status: 502, tooBig: 502}
	line, err := r.readLine()
	if err != nil {
		return nil, err
	}
	resp := &ResponseHead{}
	if err := parseStatusLine(r, line, resp); err != nil {
		return nil, err
	}
	if resp.Header, err = readFields(r); err != nil {
		return nil, err
	}
	resp.Size = r.n
	if resp.ContentLength, resp.Chunked, err = framing(r, resp.Header, resp.Minor); err != nil {
		return nil, err
	}
	return resp, nil
}

// parseStatusLine parses HTTP-version SP 3DIGIT SP reason; the SP before an
// empty reason may be missing (RFC 9112 §4).
func parseStatusLine(r *reader, line string, resp *ResponseHead) error {
	version, rest, ok := strings.Cut(line, " ")
	if !ok {
		return r.malformed("malformed status line")
	}
	if resp.Major, resp.Minor, ok = parseVersion(version); !ok || resp.Major != 1 {
		return r.malformed("malformed HTTP version")
	}
	code, reason, _ := strings.Cut(rest, " ")
	if len(code) != 3 || !isDigit(code[0]) || !isDigit(code[1]) || !isDigit(code[2]) || code[0] < '1' || code[0] > '5' {
		return r.malformed("malformed status code")
	}
	if !validValue(reason) {
		return r.malformed("invalid character in reason phrase")
	}
	resp.Status, _ = strconv.Atoi(code)
	resp.Reason = reason
	return nil
}

// ReadTrailer reads trailer fields after a chunked body's last chunk, up to
// and including the empty line, within max bytes. status is the Status of
// any *Error (400 reading a request, 502 reading a response).
func ReadTrailer(br *bufio.Reader, max, status int) (Header, error) {
	if max <= 0 {
		max = DefaultMaxHeaderBytes
	}
	r := &reader{br: br, limit: max, status: status, tooBig: status}
	return readFields(r)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// IsToken reports whether s is a non-empty RFC 9110 §5.6.2 token (a
// header name, a method, a cookie name).
func IsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', isDigit(c):
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// validValue allows VCHAR, obs-text, SP and HTAB (RFC 9110 §5.5).
func validValue(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// validHost reports whether s is uri-host [":" port] (RFC 9110 7.2, RFC
// 3986): a reg-name or IPv4 address, or an IP literal in brackets, then a
// port of at most five digits; nothing that could end an authority early.
func validHost(s string) bool {
	host, port, hasPort := s, "", false
	if strings.HasPrefix(s, "[") {
		// IP-literal: an IPv6 address (or IPvFuture) in brackets.
		end := strings.IndexByte(s, ']')
		if end < 2 {
			return false
		}
		host, port = s[1:end], s[end+1:]
		if port != "" {
			if port[0] != ':' {
				return false
			}
			port, hasPort = port[1:], true
		}
		if !hostChars(host, true) {
			return false
		}
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port, hasPort = s[:i], s[i+1:], true
		}
		if !hostChars(host, false) || (hasPort && host == "") {
			return false
		}
	}
	// port = *DIGIT (RFC 3986 3.2.3): "h:" is valid, "h:abc" is not.
	for i := 0; i < len(port); i++ {
		if !isDigit(port[i]) {
			return false
		}
	}
	return len(port) <= 5
}

// hostChars reports whether s holds only characters of a reg-name or
// IPv4 address (unreserved, pct-encoded, sub-delims: RFC 3986 3.2.2), and
// colons too inside brackets.
func hostChars(s string, literal bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', isDigit(c):
		case strings.IndexByte("-._~!$&'()*+,;=%", c) >= 0:
		case c == ':' && literal:
		default:
			return false
		}
	}
	return true
}
