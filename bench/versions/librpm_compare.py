#!/usr/bin/python3
"""librpm's answer for each `A<TAB>B` line on stdin: -1, 0 or 1, one line each.

The EVR strings are split by rpm's own parser (`rpm.ver`, rpmverParse) and compared by
`rpm.labelCompare` (epoch, version, release, each by rpmvercmp). A missing release is
passed as empty, the convention hids-vulns documents: librpm's rpmverCmp would skip the
release instead, which is a matching rule, not an order. Run it with /usr/bin/python3:
the `rpm` module comes from Debian's python3-rpm, not from pip.
"""
import sys

import rpm


def evr(text):
    v = rpm.ver(text)
    return (v.e, v.v, "" if v.r is None else v.r)


def main():
    out = sys.stdout
    for line in sys.stdin:
        a, b = line.rstrip("\n").split("\t")
        out.write("%d\n" % rpm.labelCompare(evr(a), evr(b)))


if __name__ == "__main__":
    main()
