"""authmilter: SPF, DKIM, DMARC and Authentication-Results for Postfix and Sendmail."""

__version__ = "0.1.0"
