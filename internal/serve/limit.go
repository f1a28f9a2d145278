package serve

import (
	"net"
	"sync"
)

// LimitListener caps concurrent connections: at most total in all (further
// ones wait in the kernel's accept queue) and at most perIP from one source
// address (further ones are closed at once). A public listener without such
// caps lets one client exhaust the process.
func LimitListener(ln net.Listener, total, perIP int) net.Listener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, total), perIP: perIP, open: map[string]int{}}
}

type limitListener struct {
	net.Listener
	slots chan struct{}
	perIP int
	mu    sync.Mutex
	open  map[string]int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		l.slots <- struct{}{}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		ip := c.RemoteAddr().String()
		if h, _, err := net.SplitHostPort(ip); err == nil {
			ip = h
		}
		l.mu.Lock()
		if l.perIP > 0 && l.open[ip] >= l.perIP {
			l.mu.Unlock()
			c.Close()
			<-l.slots
			continue
		}
		l.open[ip]++
		l.mu.Unlock()
		return &limitConn{Conn: c, release: func() {
			l.mu.Lock()
			if l.open[ip]--; l.open[ip] <= 0 {
				delete(l.open, ip)
			}
			l.mu.Unlock()
			<-l.slots
		}}, nil
	}
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
