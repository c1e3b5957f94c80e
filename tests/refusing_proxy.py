"""A reverse proxy that refuses WebSocket upgrades, as some corporate proxies do.

``python refusing_proxy.py TARGET_PORT``: listens on a free port of
127.0.0.1, says ``proxy listening on PORT`` on stdout, and forwards every
plain HTTP request (event streams and long polls included, streamed as they
come) to 127.0.0.1:TARGET_PORT; a request asking for ``Upgrade`` gets 403.
"""

import sys
from urllib.parse import quote

from twisted.internet import reactor
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import Site


class RefusingProxy(ReverseProxyResource):
    def getChild(self, path, request):
        child = self.path + b"/" + quote(path, safe="").encode("ascii")
        return RefusingProxy(self.host, self.port, child, self.reactor)

    def render(self, request):
        if request.getHeader(b"upgrade"):
            request.setResponseCode(403)
            return b"upgrades are not allowed here\n"
        return super().render(request)


def main() -> None:
    target = int(sys.argv[1])
    site = Site(RefusingProxy("127.0.0.1", target, b""))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    print("proxy listening on %d" % port.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
