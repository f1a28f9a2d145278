#!/usr/bin/env bash
# Installs what the stack and the tests run against, from Debian's packages:
# PostgreSQL (stand-in for YugabyteDB), Redis, etcd (for multi-process
# fault tests), clamd (virus scanning, with a test signature only), the mail
# tools the tests drive, and dovecot-core (the library of ../shared/tools/imaptest);
# with the argument "bench", Dovecot's IMAP server too (the IMAP benchmark's
# comparison). Idempotent; quiet when everything is there.
#
# Each check asks for what the tests use, not for a command name: swaks
# without Net::SSLeay runs but cannot do --tls (a Recommends that
# --no-install-recommends leaves out), and imaptest runs only where
# libdovecot can be loaded.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v swaks >/dev/null || need+=(swaks)
perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl libio-socket-ssl-perl)
command -v python3 >/dev/null || need+=(python3)
command -v jq >/dev/null || need+=(jq)
ls /usr/lib/dovecot/libdovecot.so* >/dev/null 2>&1 || need+=(dovecot-core)
command -v mbsync >/dev/null || need+=(isync)
test -x /usr/sbin/clamd || need+=(clamav-daemon)
command -v kcat >/dev/null || need+=(kcat)
# make bench compares the IMAP server with Dovecot's on this machine: its
# imap process (dovecot-core alone, installed above for imaptest, has
# /usr/sbin/dovecot but not the IMAP service).
if [ "${1:-}" = bench ]; then
  test -x /usr/lib/dovecot/imap || need+=(dovecot-imapd)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts the services it installs where it can; the stack runs its
# own on private ports and data directories, so the system ones are not used.
# make bench also drives the router with Postfix's smtp-source, from another
# process (so that its CPU is not counted as the servers'). Debian ships it
# only inside the postfix package, whose daemon is not wanted: take the
# binary and its libraries out of the package, into bin/postfix.
if [ "${1:-}" = bench ] && [ ! -x bin/postfix/smtp-source ]; then
  echo "fetching smtp-source (from Debian's postfix package, not installed)"
  scratch=$(mktemp -d)
  (cd "$scratch" && apt-get download postfix >/dev/null 2>&1 && dpkg -x postfix_*.deb x)
  mkdir -p bin/postfix
  cp "$scratch"/x/usr/sbin/smtp-source "$scratch"/x/usr/lib/postfix/libpostfix-*.so bin/postfix/
  rm -rf "$scratch"
fi
