"""The MTA profiles crtool knows (which exit codes it speaks), in a module of their own so that
`deliver`'s client path, which imports next to nothing, checks against the same list as the
config and the command line."""

MTA_PROFILES = ("qmail", "postfix", "exim", "sendmail", "procmail", "dovecot")
