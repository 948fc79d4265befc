// Package flagfile reads a configuration file holding command-line flags,
// one per line, so that a daemon reads the same names from a file as from
// its command line.
//
// A line is empty, a comment (first non-blank character '#'), or one flag
// in any of these forms; the leading dashes are optional:
//
//	listen :8080
//	--listen :8080
//	--listen=:8080
//	listen=:8080
//	tcp-keepalive          (a boolean flag, set to true)
//
// A value runs to the end of the line, blanks around it trimmed; it may be
// wrapped in double quotes to keep them (Go string syntax).
package flagfile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Line is one flag read from a file.
type Line struct {
	// N is the line number, from 1.
	N int
	// Name is the flag's name without dashes; Value its value, and
	// HasValue whether one was given (false for a bare boolean).
	Name     string
	Value    string
	HasValue bool
}

// Arg is the line as one command-line argument: "--name=value" or "--name".
func (l Line) Arg() string {
	if !l.HasValue {
		return "--" + l.Name
	}
	return "--" + l.Name + "=" + l.Value
}

// LineError is a line that is not a flag, or whose flag was refused.
type LineError struct {
	Path string
	N    int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %v", e.Path, e.N, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// Read reads the file at path. Errors name the file and the line.
func Read(path string) ([]Line, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file: %w", err)
	}
	return Parse(path, b)
}

// Parse parses the contents b of the file named path.
func Parse(path string, b []byte) ([]Line, error) {
	var lines []Line
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		l, ok, err := parseLine(sc.Text())
		if err != nil {
			errs = append(errs, &LineError{Path: path, N: n, Err: err})
			continue
		}
		if ok {
			l.N = n
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", path, err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return lines, nil
}

func parseLine(s string) (Line, bool, error) {
	s = strings.TrimSpace(s)
	if s == "" || s[0] == '#' {
		return Line{}, false, nil
	}
	name, value, hasValue := s, "", false
	if i := strings.IndexAny(s, "= \t"); i >= 0 {
		name, value, hasValue = s[:i], strings.TrimSpace(s[i+1:]), true
	}
	name = strings.TrimPrefix(strings.TrimPrefix(name, "-"), "-")
	if name == "" || strings.HasPrefix(name, "-") || strings.ContainsAny(name, "\"'#") {
		return Line{}, false, fmt.Errorf("%q is not a flag: want \"name value\" or \"--name=value\"", s)
	}
	if hasValue && len(value) >= 2 && value[0] == '"' {
		uq, err := strconv.Unquote(value)
		if err != nil {
			return Line{}, false, fmt.Errorf("flag %s: bad quoted value %s: %w", name, value, err)
		}
		value = uq
	}
	return Line{Name: name, Value: value, HasValue: hasValue}, true, nil
}
