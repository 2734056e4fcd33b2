"""Domain names and IP addresses in the one form every check, rule and report compares.

A domain the author check extracts, a d= a signature claims, a policy rule names and a report
lists must all be spelt alike, or a rule written for one does not match the other; the same holds
for the client address that SPF, the policy and Authentication-Results each see. Text that came
from outside (DNS, a header) is reduced to printable ASCII here too, the one way every report does it.
"""

from __future__ import annotations

import encodings.idna
import functools
import ipaddress
import re

__all__ = ["normalize_client_ip", "normalize_domain"]

# Full stops that IDNA treats as label separators (RFC 3490 section 3.1). Mapping them keeps
# "bank\uff0ecom" from being read as one unrelated label while a reader sees "bank.com".
_IDEOGRAPHIC_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
# Characters IDNA2003 (all the standard library offers) and IDNA2008 map differently; a domain
# containing one would be looked up under a different name than the one its owner registered.
_IDNA_DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


# Cached: the same few domains come back in every message (From, d=, MAIL FROM, policy rules).
@functools.lru_cache(maxsize=4096)
def normalize_domain(name: str) -> str:
    """Lower-case A-label form of a domain name; ValueError when it is not a usable host name.

    U-labels become A-labels (RFC 9989 section 5.3.1 via RFC 5890); one trailing dot is dropped.
    Labels must be LDH after conversion: atext allows "bank.com!x" in a dot-atom, but no DNS name
    a reader could recognise looks like that.
    """
    name = name.translate(_IDEOGRAPHIC_DOTS)
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("empty domain")
    labels: list[str] = []
    for label in name.split("."):
        if not label:
            raise ValueError(f"empty label in {name!r}")
        if label.isascii():
            ascii_label = label.lower()
        else:
            if any(ch in _IDNA_DEVIATIONS for ch in label):
                raise ValueError(f"label {label!r} has a character IDNA2003 and IDNA2008 disagree on")
            try:
                ascii_label = encodings.idna.ToASCII(label).decode("ascii").lower()
            except UnicodeError as exc:
                raise ValueError(f"label {label!r} is not a valid IDN: {exc}") from None
        if not _LDH_LABEL.match(ascii_label):
            raise ValueError(f"label {ascii_label!r} is not a host name label")
        if ascii_label.startswith("xn--"):
            _check_a_label(ascii_label)
        labels.append(ascii_label)
    result = ".".join(labels)
    if len(result) > 253:
        raise ValueError("domain longer than 253 characters")
    return result


def _check_a_label(label: str) -> None:
    # A malformed "xn--" label would otherwise be looked up as-is while a client shows garbage or
    # its own decoding; insist it round-trips.
    try:
        unicode_label = label[4:].encode("ascii").decode("punycode")
        round_trip = encodings.idna.ToASCII(unicode_label).decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"label {label!r} is not a valid A-label") from None
    if round_trip != label:
        raise ValueError(f"label {label!r} is not a valid A-label")


@functools.lru_cache(maxsize=4096)  # several callers per message, few distinct clients
def normalize_client_ip(client_ip: str) -> str | None:
    """Normalized text of the client IP as SPF sees it, or None when it is not an address.

    Accepts what MTAs pass: "IPv6:" tags, brackets, zone ids; IPv4-mapped IPv6 becomes IPv4.
    """
    text = client_ip.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":  # Sendmail's {client_addr} / RFC 5321 address literal tag
        text = text[5:]
    text = text.split("%", 1)[0]  # a zone id means nothing to SPF
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        # RFC 7208 section 5: an IPv4-mapped client is an IPv4 client (ip4 and A apply).
        return str(addr.ipv4_mapped)
    return str(addr)


def address_domain(address: str) -> str:
    """The normalized domain of an envelope address ("<a@Example.ORG>" gives "example.org"); ""
    for the null sender, an address without a domain, or a domain that is no host name."""
    addr = address.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if "@" not in addr:
        return ""
    try:
        return normalize_domain(addr.rsplit("@", 1)[1].strip())
    except ValueError:
        return ""


def printable_ascii(text: str) -> str:
    """`text` with each character outside printable ASCII (space to tilde) as "?"."""
    if text.isascii() and text.isprintable():
        return text  # the usual case: nothing to replace, no walk over the characters
    return "".join(c if " " <= c <= "~" else "?" for c in text)
