"""Manifests several fast tests share."""

#: The web example with one pool host: four nodes, every role once (servers twice).
SHOP = """\
apiVersion: cloudd/v1
kind: Cloud
name: shop
type: web
domain_template: web.xml
pool:
  - {name: pm1, address: 192.0.2.70}
roles:
  balancer: [{address: 192.0.2.175, image: /img/lb.qcow2}]
  server:
    - {address: 192.0.2.176, image: /img/web1.qcow2}
    - {address: 192.0.2.178, image: /img/web2.qcow2}
  database: [{address: 192.0.2.177, image: /img/db.qcow2}]
settings: {app_port: 8080}
"""
