from server.middleware.hosts import default_allowed_hosts, host_allowed, host_name


def test_loopback_binding_allows_loopback_names_only():
    assert default_allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert default_allowed_hosts("::1") == ["localhost", "127.0.0.1", "[::1]"]
    assert default_allowed_hosts("192.168.1.5") == ["localhost", "127.0.0.1", "[::1]", "192.168.1.5"]


def test_binding_every_address_allows_any_host():
    assert default_allowed_hosts("0.0.0.0") == ["*"]
    assert default_allowed_hosts("::") == ["*"]


def test_host_header_without_its_port():
    assert host_name("localhost:8000") == "localhost"
    assert host_name("[::1]:8000") == "[::1]"
    assert host_name("[::1]") == "[::1]"
    assert host_name("example.com") == "example.com"


def test_patterns():
    allowed = ["localhost", "*.example.com"]
    assert host_allowed("LOCALHOST", allowed)
    assert host_allowed("api.example.com", allowed)
    assert not host_allowed("example.com.evil.net", allowed)
    assert not host_allowed("evilexample.com", allowed)
    assert not host_allowed("", allowed)
    assert host_allowed("anything", ["*"])
