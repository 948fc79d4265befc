package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wsplice/wsplice/userspace/backend"
)

// maxAdminBody bounds an admin request body.
const maxAdminBody = 64 << 10

// backendRoutes serves the backend pool on the admin server:
//
//	GET    /backends                      every backend (JSON)
//	POST   /backends                      add one: {"addr":..,"weight":..,"max_conns":..,"proxy_protocol":..} or a --backend spec
//	DELETE /backends/{addr}               remove one: no new connections, existing ones left alone
//	POST   /backends/{addr}/drain         no new connections; deadline=DURATION closes what is left then
//	PUT    /backends/{addr}/weight        set the weight: {"weight":N}, a bare number, or weight=N
func (p *Proxy) backendRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /backends", func(w http.ResponseWriter, r *http.Request) {
		st := p.pool.Status()
		if st == nil {
			st = []backend.Status{} // a list, empty: [] rather than null
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /backends", func(w http.ResponseWriter, r *http.Request) {
		body, ok := readAdminBody(w, r)
		if !ok {
			return
		}
		spec, err := parseBackendBody(body)
		if err != nil {
			adminError(w, http.StatusBadRequest, err)
			return
		}
		if _, err := p.pool.Add(spec); err != nil {
			adminError(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusCreated, p.backendStatus(spec.Addr))
	})
	mux.HandleFunc("DELETE /backends/{addr}", func(w http.ResponseWriter, r *http.Request) {
		if err := p.pool.Remove(r.PathValue("addr")); err != nil {
			adminError(w, statusOf(err), err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /backends/{addr}/drain", func(w http.ResponseWriter, r *http.Request) {
		deadline, ok := drainDeadline(w, r)
		if !ok {
			return
		}
		addr := r.PathValue("addr")
		if err := p.pool.Drain(addr, deadline); err != nil {
			adminError(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, p.backendStatus(addr))
	})
	mux.HandleFunc("PUT /backends/{addr}/weight", func(w http.ResponseWriter, r *http.Request) {
		// A JSON value is its raw text: a number passes Atoi, a string
		// or null does not.
		v, _, ok := adminValue(w, r, "weight")
		if !ok {
			return
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			adminError(w, http.StatusBadRequest, fmt.Errorf("weight %q: want an integer", v))
			return
		}
		addr := r.PathValue("addr")
		if err := p.pool.SetWeight(addr, n); err != nil {
			adminError(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, p.backendStatus(addr))
	})
}

// parseBackendBody reads a backend to add: a JSON object or a --backend spec.
func parseBackendBody(body []byte) (backend.Spec, error) {
	s := strings.TrimSpace(string(body))
	if !strings.HasPrefix(s, "{") {
		return backend.ParseSpec(s)
	}
	// Weight as a pointer: left out means 1, but 0 is refused, as in
	// the --backend form.
	var js struct {
		backend.Spec
		Weight *int `json:"weight"`
	}
	if err := decodeStrict(s, &js); err != nil {
		return backend.Spec{}, fmt.Errorf("backend JSON: %w", err)
	}
	sp := js.Spec
	sp.Weight = 1
	if js.Weight != nil {
		if *js.Weight < 1 || *js.Weight > backend.MaxWeight {
			return backend.Spec{}, fmt.Errorf("%w %q: weight %d: must be between 1 and %d", backend.ErrInvalidSpec, sp.Addr, *js.Weight, backend.MaxWeight)
		}
		sp.Weight = *js.Weight
	}
	return sp, sp.Check() // the pool spells the address its one way
}

// decodeStrict decodes one JSON value into v: unknown fields and anything
// after the value are errors.
func decodeStrict(s string, v any) error {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("more data after the JSON object")
	}
	return nil
}

func (p *Proxy) backendStatus(addr string) any {
	addr = backend.CanonicalAddr(addr)
	for _, st := range p.pool.Status() {
		if st.Addr == addr {
			return st
		}
	}
	return map[string]string{"addr": addr}
}

// readAdminBody reads r's body, answering 413 when it is over
// maxAdminBody (cut short, its start could pass for a whole request) and
// 400 when it cannot be read; ok is false when it answered.
func readAdminBody(w http.ResponseWriter, r *http.Request) (body []byte, ok bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		adminError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body over %d bytes", maxAdminBody))
		return nil, false
	case err != nil:
		adminError(w, http.StatusBadRequest, err)
		return nil, false
	}
	return body, true
}

// adminValue reads the one parameter name of an admin request: from the
// query (?name=V) or the body, as a form (name=V, curl -d), a JSON
// object holding only it ({"name": V}: v is V's raw JSON text, fromJSON
// set) or a bare value; "" when there is none. Anything else is answered
// 400 (ok false): a typo must not pass for "no value".
func adminValue(w http.ResponseWriter, r *http.Request, name string) (v string, fromJSON, ok bool) {
	if v := r.URL.Query().Get(name); v != "" {
		return v, false, true
	}
	body, ok := readAdminBody(w, r)
	if !ok {
		return "", false, false
	}
	s := strings.TrimSpace(string(body))
	switch {
	case strings.HasPrefix(s, "{"):
		var js map[string]json.RawMessage
		if err := decodeStrict(s, &js); err != nil || len(js) != 1 || js[name] == nil {
			adminError(w, http.StatusBadRequest, fmt.Errorf(`body %q: want {"%s": VALUE}`, s, name))
			return "", false, false
		}
		return string(js[name]), true, true
	case strings.Contains(s, "="):
		q, err := url.ParseQuery(s)
		if err != nil || len(q) != 1 || len(q[name]) != 1 {
			adminError(w, http.StatusBadRequest, fmt.Errorf("body %q: want %s=VALUE", s, name))
			return "", false, false
		}
		return q.Get(name), false, true
	}
	return s, false, true
}

// drainDeadline reads a drain's deadline (adminValue; JSON as a string,
// {"deadline":"30s"}); none means no deadline.
func drainDeadline(w http.ResponseWriter, r *http.Request) (d time.Duration, ok bool) {
	v, fromJSON, ok := adminValue(w, r, "deadline")
	if !ok {
		return 0, false
	}
	if fromJSON {
		if err := json.Unmarshal([]byte(v), &v); err != nil {
			adminError(w, http.StatusBadRequest, fmt.Errorf(`deadline %s: want a string such as "30s"`, v))
			return 0, false
		}
	}
	if v == "" {
		return 0, true
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		adminError(w, http.StatusBadRequest, fmt.Errorf("deadline %q: want a positive duration such as 30s", v))
		return 0, false
	}
	return d, true
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, backend.ErrExists):
		return http.StatusConflict
	}
	return http.StatusBadRequest
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func adminError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
