"""What the HELO/EHLO name says about the client: facts for the policy, never a refusal of its own.

RFC 5321 section 4.1.4 forbids refusing mail because the HELO name does not match the client's
address, and plenty of legitimate servers announce an internal name. What a name that is not
even syntactically valid, or one that claims to be us, is worth is the operator's call, so this
module only sets flags; no shipped policy acts on them.

Syntax (RFC 5321 section 4.1.3 and 4.1.2, RFC 6531 section 3.3)
------------------------------------------------------------
* A Domain: LDH labels separated by dots, no trailing dot; U-labels are allowed (SMTPUTF8
  clients may send them) and are compared in A-label form. A name whose last label is all digits
  is no host name (RFC 3696 section 2): "1.2.3" or "host.123" are not valid.
* An address literal: "[192.0.2.1]" (each part 1-3 digits, at most 255) or "[IPv6:2001:db8::1]"
  (the tag in any case). General-address-literals with other tags are not valid: no other tag has
  been standardized, so nothing could check them. Zone ids ("%eth0") are no part of the syntax.
* A bare address ("192.0.2.1" without brackets) is the commonest error; it is not valid syntax
  and gets its own flag. For the address comparisons below it counts like a literal, since the
  client plainly meant to name that address.

Comparisons
-----------
`literal_mismatch`: a literal (or bare address) that is not the client's address, IPv4-mapped
IPv6 read as IPv4 on both sides; False when the client address is unknown. `is_ours`: the name
is one of our own names (the authserv-id, the MTA's `j`) or the literal one of our addresses
(the MTA's `{daemon_addr}` / `{if_addr}`): a stranger greeting us with our own identity.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from authmilter.core.model import HeloResult
from authmilter.core.names import normalize_client_ip, normalize_domain

__all__ = ["check_helo"]

_IPV4_LITERAL = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\Z")
_IPV6_TAG = "ipv6:"


def check_helo(
    helo: str,
    client_ip: str | None,
    *,
    our_names: Iterable[str] = (),
    our_addresses: Iterable[str] = (),
) -> HeloResult:
    text = helo.strip()
    notes: list[str] = []
    domain = _domain(text)
    address: str | None = None
    literal = bare_ip = False
    if domain is None:
        if text.startswith("[") and text.endswith("]"):
            address = _literal_address(text[1:-1])
            literal = address is not None
        else:
            address = _bare_address(text)
            bare_ip = address is not None
    syntax_ok = domain is not None or literal
    fqdn = domain is not None and "." in domain
    if not text:
        notes.append("no HELO name")
    elif bare_ip:
        notes.append("an IP address without the brackets of an address literal")
    elif not syntax_ok:
        notes.append("neither a domain name nor an address literal")
    elif domain is not None and not fqdn:
        notes.append("not a fully qualified domain name")

    client = normalize_client_ip(client_ip) if client_ip else None
    mismatch = address is not None and client is not None and address != client
    if mismatch:
        notes.append(f"the address {address} is not the client's ({client})")
    ours = False
    if domain is not None:
        ours = domain in _names(our_names)
    elif address is not None:
        ours = address in _addresses(our_addresses)
    if ours:
        notes.append("our own " + ("name" if domain is not None else "address"))
    return HeloResult(helo=text, syntax_ok=syntax_ok, fqdn=fqdn, bare_ip=bare_ip, literal=literal,
                      literal_mismatch=mismatch, is_ours=ours, reason="; ".join(notes))


def _domain(text: str) -> str | None:
    """The A-label form of `text` if it is an RFC 5321 Domain, else None."""
    if not text or text.endswith(".") or text.startswith("["):
        return None
    try:
        name = normalize_domain(text)
    except ValueError:
        return None
    if name.rsplit(".", 1)[-1].isdigit():
        return None  # "192.0.2.1" is an address, "host.123" no host name
    return name


def _literal_address(inside: str) -> str | None:
    """The normalized address of an RFC 5321 address literal (without its brackets), or None."""
    if inside[:len(_IPV6_TAG)].lower() == _IPV6_TAG:
        text = inside[len(_IPV6_TAG):]
        if "%" in text or not text:
            return None
        try:
            return _normal(ipaddress.IPv6Address(text))
        except ValueError:
            return None
    return _ipv4(inside)


def _bare_address(text: str) -> str | None:
    ipv4 = _ipv4(text)
    if ipv4 is not None:
        return ipv4
    if ":" not in text or "%" in text:
        return None
    try:
        return _normal(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _ipv4(text: str) -> str | None:
    # By hand rather than with ipaddress, which refuses the leading zeros RFC 5321's Snum allows.
    m = _IPV4_LITERAL.match(text)
    if m is None:
        return None
    octets = [int(part) for part in m.groups()]
    if any(o > 255 for o in octets):
        return None
    return str(ipaddress.IPv4Address(bytes(octets)))


def _normal(addr: ipaddress.IPv6Address) -> str:
    # The client address is compared IPv4-mapped as IPv4 (names.normalize_client_ip); so is this.
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else str(addr)


def _names(names: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for name in names:
        try:
            found.add(normalize_domain(name.strip()))
        except ValueError:
            continue  # an authserv-id need not be a host name
    return found


def _addresses(addresses: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for text in addresses:
        normal = normalize_client_ip(text) if text.strip() else None
        if normal is not None:
            found.add(normal)
    return found
