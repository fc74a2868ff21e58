"""URL converters: ``<pk:name>`` matches ids that fit a PostgreSQL bigint (1-18 digits)."""


class PkConverter:
    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(int(value))
