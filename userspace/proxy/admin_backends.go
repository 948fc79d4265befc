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
		body, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBody))
		if err != nil {
			adminError(w, http.StatusBadRequest, err)
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
		var deadline time.Duration
		if v := formValue(r, "deadline"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				adminError(w, http.StatusBadRequest, fmt.Errorf("deadline %q: want a positive duration such as 30s", v))
				return
			}
			deadline = d
		}
		addr := r.PathValue("addr")
		if err := p.pool.Drain(addr, deadline); err != nil {
			adminError(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, p.backendStatus(addr))
	})
	mux.HandleFunc("PUT /backends/{addr}/weight", func(w http.ResponseWriter, r *http.Request) {
		v := r.URL.Query().Get("weight")
		if v == "" {
			body, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBody))
			if err != nil {
				adminError(w, http.StatusBadRequest, err)
				return
			}
			v = strings.TrimSpace(string(body))
			var js struct {
				Weight *int `json:"weight"`
			}
			if strings.HasPrefix(v, "{") {
				if err := decodeStrict(v, &js); err != nil || js.Weight == nil {
					adminError(w, http.StatusBadRequest, errors.New(`want {"weight": N}`))
					return
				}
				v = strconv.Itoa(*js.Weight)
			} else if after, ok := strings.CutPrefix(v, "weight="); ok {
				v = after
			}
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

// formValue is a query or form parameter; a body of NAME=VALUE pairs
// counts as a form whatever its Content-Type (curl -d, scripts).
func formValue(r *http.Request, name string) string {
	if v := r.URL.Query().Get(name); v != "" {
		return v
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBody))
	if err != nil {
		return ""
	}
	q, err := url.ParseQuery(strings.TrimSpace(string(body)))
	if err != nil {
		return ""
	}
	return q.Get(name)
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
