#!/bin/bash
# Healthcheck without curl in the image: GET http://127.0.0.1:PORT/PATH, healthy on a 200.
#   probe.sh PORT [PATH]
exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "${2:-/readyz}" >&3
read -r -t 5 _ status _ <&3 || exit 1
[[ "$status" == 200 ]]
