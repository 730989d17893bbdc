/**
 * The agent's configuration (agent/src/config.ts) and its SOPS reader (agent/src/sops.ts).
 *
 * SOPS fixtures come from two places:
 * - files written by the real `sops` tool, committed with their (public, test-only) age keys in public
 *   repositories: humphd/sops-age (src/data/secret.enc.{yaml,json}, key.txt; sops 3.8.1),
 *   nobbs/terraform-provider-sops (test/fixtures/complex.sops.yaml and basic-mac-mismatch.sops.yaml,
 *   test/age.key; sops 3.9.1) and gibbz00/rops (crates/rops/tests/sops_references/*.yaml, the key in
 *   crates/lib/src/integration/age.rs; reference files written by sops for its parity tests). They
 *   prove that the reader agrees with sops about the data key, the values and the MAC (including
 *   unencrypted values, unencrypted_suffix, encrypted_regex and mac_only_encrypted).
 * - `sopsEncrypt` below, a small encrypter written after getsops/sops `Tree.Encrypt` (sops.go) and
 *   aes/cipher.go, for files the tests need to shape (the agent's own recipient, edits, JSON).
 * No sops binary is available on this machine (Debian has no `sops` package here).
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { armor, Encrypter, generateX25519Identity, identityToRecipient } from 'age-encryption';
import type { Test } from 'tap';
import t from 'tap';
import { stringify } from 'yaml';
import type { AgentConfigProblem } from '../agent/src/config.js';
import { AgentConfigError, loadAgentConfig, schemeFitsEngine } from '../agent/src/config.js';
import type { SopsErrorCode } from '../agent/src/sops.js';
import { goFormatFloat, openSops, openSopsFile, SopsError } from '../agent/src/sops.js';
import { formatSigningKey, generateKeys } from '../src/keys.js';
import { makeTls } from './services/tls.js';

function tempDir(t: Test): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rotor-agent-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ---------------------------------------------------------------------------------------------------
// Files written by the real sops, and their keys (test keys published with them).

/** humphd/sops-age key.txt: public key age1je6kjhzuhdjy3fqptpttxjh5k8q46vygzlgtpuq3030c947pc5tqz9dqvr */
const HUMPHD_KEY = 'AGE-SECRET-KEY-1QXRVEJH9S4NQU0FPD6V79ESZQ8S6PXH3L8V40EVPTHFH6KNKD4DQ7SKC4P';
/** nobbs/terraform-provider-sops test/age.key: age1cxgy6y5vctq5vy6dn4s3takyexa4n83cueuv8m0j0ngv2w6ff39qfguyjn */
const NOBBS_KEY = 'AGE-SECRET-KEY-19WSGAJ06R7H5PSVZC3SJQSAUVQ7ETS9D5CWKEDJX00WHZJZP0UYSPPH855';
/** gibbz00/rops mock_private_key_str: age1se5ghfycr4n8kcwc3qwf234ymvmr2lex2a99wh8gpfx97glwt9hqch4569 */
const ROPS_KEY = 'AGE-SECRET-KEY-1EQUCGFZH8UZKSZ0Z5N5T234YRNDT4U9H7QNYXWRRNJYDDVXE6FWSCPGNJ7';

const HUMPHD_YAML = String.raw`secret: ENC[AES256_GCM,data:hxKQomzJ2ta93HAV6HimHQ==,iv:Pa66nqBKqll2XQvRLtuMcwpKXnm58n3oN2kYP9sg7xI=,tag:gywJnN8jKPT72iNlm30uWg==,type:str]
sops:
  kms: []
  gcp_kms: []
  azure_kv: []
  hc_vault: []
  age:
    - recipient: age1je6kjhzuhdjy3fqptpttxjh5k8q46vygzlgtpuq3030c947pc5tqz9dqvr
      enc: |
        -----BEGIN AGE ENCRYPTED FILE-----
        YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBmMktNMm5vbTZrMG5EYmR4
        WXUwbGM4dnBmSVFXYUU5QjlNVUJHMDAzdGdzCk03cGwvVzR4dHh0R0NqL05QWWIv
        STl2QXhwSTZEMndyeHRlRjlGSHg1Wk0KLS0tIFhpSVhBRzVFTVMzMzhpUjBKRG1J
        M1Y2d3BnT09WTWtXYkNyZG9rWVF4TGsKFJVlHQxRJZgS/pvVGdLE3h398r8WoR9B
        e62vpduPOrkjZECo28BY/jQ8Tcj2WYKQ6syPm/hOrNuOWH5clTr6Rw==
        -----END AGE ENCRYPTED FILE-----
    - recipient: age19j4d6v9j7rx5fs629fu387qz4zmlpsqjexa4s08tkfrrmfdl5cwqjlaupd
      enc: |
        -----BEGIN AGE ENCRYPTED FILE-----
        YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSA3djBHaW9abU9UVXpHRWNJ
        MHJmK2RuYjdtY1BTNEF5dFlpeC96Vng5MUVVCmxuRURwWVUrOFFKdnhkaEFtNk85
        UGdGU0FjL1BKcmtyOGZReHdwSkcvN1kKLS0tIE9nZ2FlR2YvdVV2bXIxejE4RFQr
        ajNTK1I2Zko3amRXcDJ1RkRwTXFHam8Kp+e+mpLCrX7vjuTHhWZjCFAi47DliHcM
        itiDjpHrccKbdNWfpzAZBAaVFJM1slWDiRcU8tToHmKEwXdWT+fyfw==
        -----END AGE ENCRYPTED FILE-----
    - recipient: age13runq29jhy9kfpaegczrzttykerswh0qprq59msgd754yermtfmsa3hwg2
      enc: |
        -----BEGIN AGE ENCRYPTED FILE-----
        YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSA4Zklpcit1blNNNktoak1T
        MFZFSXhUUmtpcXhGa2RneDI4NDllMWh3ZFhRCjBOT2Q5QjJrdDh0R3J3eFdkTW9K
        RzFoMHZPTkpuV29ka1hUSU9VUEJyMDAKLS0tIDJyd0pVd2ZkdzBZVDR5K1BhSXMr
        TGswdkdRbUxxYWR3T0kyMDNWbFhFVEEKWmJoCRzgEoPf4BcLmq623XvnwqvnkgXI
        zyLl4kfg7hfWLeJebyBgZytnKVDaPSxwVNiA+0v/aYCoGciibQgKEQ==
        -----END AGE ENCRYPTED FILE-----
  lastmodified: "2024-03-25T01:15:16Z"
  mac: ENC[AES256_GCM,data:kHA6kF4yWXe1jP4qFMUEn6BKKtM5bEbxITglOhItT1VkCg4EH8v+bANPCAFqOIWZvgmEjjVmM7bE3n4LfC4bEyLmbq1+lURZSnLlJ2CCKGeR0BWE34aUSYmRk0fZ3XvJO37Pu0ZFNy9D3eQS66CHU2cVhol4+UKWs1khaXr6gf4=,iv:vZY0BEtZbkD3bLC5P1J96k04PHlGpsogFmi7U+G34qk=,tag:HvOtcIEfzfY0mT0jVKCx4w==,type:str]
  pgp: []
  unencrypted_suffix: _unencrypted
  version: 3.8.1
`;

const HUMPHD_JSON = String.raw`{
  "secret": "ENC[AES256_GCM,data:s0/KBsFec29XLrGbAnLiNA==,iv:k5oP3kb8tTbZaL3PxbFWN8ToOb8vfv2b1EuPz1LbmYU=,tag:n1RlTSRKGgoB909D4I3n+A==,type:str]",
  "string": "ENC[AES256_GCM,data:aJs3s1nk,iv:aoqpnybhdwOy7DpWrZN4j/cuJajploVuVHWY90+TN+4=,tag:clb0yzj9gvJSvKmGFhlk5g==,type:str]",
  "int": "ENC[AES256_GCM,data:tw==,iv:EfxGN7bBlnxjmwfqgWSJzjx6tyY67Tu62QcAzYp8R7s=,tag:iNCbcJiR9wXRJsRB/EtxRQ==,type:float]",
  "float": "ENC[AES256_GCM,data:Y43s8Q==,iv:4K46qNKCVREzln4gIF6+8wxevGsJOE6BP8E6ETmmGQM=,tag:FT0x9dR+0M8Dziv3wbSSYw==,type:float]",
  "boolean": "ENC[AES256_GCM,data:v3uLjw==,iv:XgmPovz5l2kboO+k8THMXoaB0/BYHahAqKp/tu7N4qc=,tag:dbV1aANN0do7n3TZsRTdmA==,type:bool]",
  "complex": {
    "value": "ENC[AES256_GCM,data:ub5SNpHF6BJ2hH0m3dxp7Q==,iv:VE7cCLTy+730qTY089K8w2G7ANhVqC/m6LI1SjxQja0=,tag:c9yun105kA478EzyzOlKUw==,type:str]",
    "array": [
      "ENC[AES256_GCM,data:NzVC,iv:uxfOz2L4/uH0KYyrOhd/Ki+xvBiSCe+ZR25HcZB+HXU=,tag:5w0FkarcFXEjU2+MyuKXgQ==,type:str]",
      "ENC[AES256_GCM,data:Dsgw,iv:IU6EGLHrAe58vSqWBI7J2zEf+m5iiwERNcuFvhHkTyE=,tag:yHHcXI443XdBrkL9KUPU9w==,type:str]",
      "ENC[AES256_GCM,data:ZnzB2XU=,iv:xorfY0yMH3y8zCcXi9ShoqVIWyXSoXRIcy4Dd6NmM7M=,tag:CJm51zzzmHhymF+UnplgwA==,type:str]"
    ]
  },
  "sops": {
    "kms": null,
    "gcp_kms": null,
    "azure_kv": null,
    "hc_vault": null,
    "age": [
      {
        "recipient": "age1je6kjhzuhdjy3fqptpttxjh5k8q46vygzlgtpuq3030c947pc5tqz9dqvr",
        "enc": "-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBvNmhIQkw4aFdpWUR5eVRO\nOVlZZ1htUGJWUHp3MnBVamxxTERmc1M0alJvCm5KSVNqWUJiT0V0TElvRVJsdVVW\nR2FvTEU1Rmw0bzdrYWFXQzQrUkJseHcKLS0tIHh1TjRSK2NMYjNHU004MXpWTHRJ\nWW83TmsxTU5MZkp2VExpcmhhWkNLMkEK33Somr22bQHbxPwIdv1Fjft5hKP5ZYy6\nmsBufbrcR3lV43k2lMI5fyKZA7G7PlVcHruIkfH9mI+NGQHDb3rscQ==\n-----END AGE ENCRYPTED FILE-----\n"
      },
      {
        "recipient": "age19j4d6v9j7rx5fs629fu387qz4zmlpsqjexa4s08tkfrrmfdl5cwqjlaupd",
        "enc": "-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBiTDdYcS9GYVlpdDVYT29q\ndEtUMTZJNkR0OE4xY1RsNTh6Z01mUU1XV1FzCitJMGFGOHlvc1dUYUd4aFZ1Rkls\nVGUwVEJNbjdmSWVDY2xUWmwxa01ULzAKLS0tIGlabXBXdGxZalNyYUUvS0RtRUc4\nTHp1V3lGcHlHd2FBY0pVME4xRnBNVEkKVryKW8Ta8VaTJGmCi8Vv5e1tPMo97ftn\nB4kMLBa08esSOXg185nbRNGsY1zkoyR+V4R12WEt8k6V8vDh2z9dwA==\n-----END AGE ENCRYPTED FILE-----\n"
      },
      {
        "recipient": "age13runq29jhy9kfpaegczrzttykerswh0qprq59msgd754yermtfmsa3hwg2",
        "enc": "-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBzd0lDdVNJWkRiT0kzOGVQ\nMlFBNWdTU3h5VUozVk1tVW9HUkZRL2xGN0RZCjVBRHhQWmJDTHNYN05sV0s5UFRL\nTER0amhncmttQU1rRWI5a25rcUhBNTgKLS0tIExjUTNmY0crbTJGOGFteHhQTFdw\neXdlZUNoSDFSeTEvL1VDN3hYb09nZWcKsZrSk4e3eihD6deHjUvYykkKH2seAZ0l\nPrsiztnp/F/HxRswO2TWu6WpNuzWSBYEYIJaH2Sf7dFJptic+Suhpg==\n-----END AGE ENCRYPTED FILE-----\n"
      }
    ],
    "lastmodified": "2024-03-25T21:55:35Z",
    "mac": "ENC[AES256_GCM,data:KzBF4aA4+qF2G6wRY0QrKC3Qn8FHHNhDCefz31T8zUtbjPOwt/+G4dGAznxyieFuKCXjxpuUkZ9D+EnE993fQiPh+psFo8IjE8txxTrIcAQTqR9jtBeSF7RtkZNPy28uTyqu0kpjEEzQYJ67Pu+GWYkoCGnCaEzn+++Ji+fLjhY=,iv:gE5PMg2oG26XJgP3h+Yy+WQg6akGuXRc3bDvclRm+P8=,tag:558NOfo1asyETDKFe1dp/g==,type:str]",
    "pgp": null,
    "unencrypted_suffix": "_unencrypted",
    "version": "3.8.1"
  }
}
`;

const NOBBS_COMPLEX = String.raw`string_key: ENC[AES256_GCM,data:aKfYMxhSP+g58YfrROU=,iv:xsLLag0+NYNRNQWlf7XJ6+ixnWEOBidWvPd6C+X0ptA=,tag:alDau/fwnIvAOnJ2E3eIqQ==,type:str]
integer_key: ENC[AES256_GCM,data:kWo=,iv:qSzV19u3Rr/s6j/8OnICFD1v5pYjwSCDI1y7bk6SJqc=,tag:J1ZS+EAfxbkooKmACcm/EA==,type:int]
float_key: ENC[AES256_GCM,data:owZIKA==,iv:bDV+Rhm8yGGHO6GQDkks4R8NX0QqiOh4pZbu3X5FdQI=,tag:JA/aK2Qts9jdMJE6yzLlWw==,type:float]
boolean_key: ENC[AES256_GCM,data:H5WhcA==,iv:JMMT+Bq3oxCPC5ugAkUf6g9uQBhu4SFg3cA/7uyKjDE=,tag:cbZNfLgVbZRnY4gMUVO9JQ==,type:bool]
null_key: null
list_key:
  - ENC[AES256_GCM,data:10TG6iY=,iv:rsI0g4mEu4kPS5KUuF8n0lYQ+IZyQ0AELTgcA60fWIo=,tag:7BEnuYGHXTqt7awfvCGlZA==,type:str]
  - ENC[AES256_GCM,data:AaVCwKM=,iv:r1d9y4Cg4Gl+96m+KB99laZ7EDyF8FUEOS7bRJPKa2k=,tag:vZJ9I6t+ZVVwyJdrx2WagQ==,type:str]
  - ENC[AES256_GCM,data:ug==,iv:mvu76tij33U7wguZKurXOLVVC4x9gJ6k6WE5Q2J+B2c=,tag:CjObRX99WNBMdZNzLJT7Lw==,type:int]
  - ENC[AES256_GCM,data:y/QlL0o=,iv:VU/NQBmTLSgtmURBvlizvkf4fsjmcg+M9u6IAwBER+w=,tag:Lf8E28G1VONvEwbimW/RaQ==,type:bool]
  - null
object_key:
  nested_string: ENC[AES256_GCM,data:mpdW7orvBnw8GbD+MxY=,iv:cleLDKGTGJEtdlOxf5PK9QtFrsF8tGPGzt7oUeuVwCs=,tag:NbR6PUc2ybiNAmTizUBlcQ==,type:str]
  nested_integer: ENC[AES256_GCM,data:Ktgs,iv:ZIepKDruvWIlXWXUKCM1R/Ff5GQ9uaPQ+VZs7VGORGM=,tag:hOOdl6aE+ToQKrCmPygbtQ==,type:int]
  nested_list:
    - ENC[AES256_GCM,data:Ia7jExvsIEsheQ9+,iv:ZGjh77YfeEa3CFew1tpH53IJ9Sf4Nl4ipEZeMtIjFRs=,tag:GVXgf6d+fesBJNkruhNg9g==,type:str]
    - ENC[AES256_GCM,data:bZ1r,iv:vVaMV4JXZTBB0yQDq9nuPAXydmgVtPDZXuqXR/F0+8g=,tag:wGirYmammEaEQxEs0c6htA==,type:int]
  nested_object:
    deeper_string: ENC[AES256_GCM,data:chkJVYHvsL+O1+HWUHI=,iv:l3yyyHBBJEbg1dReR4RCW4EuVQ07WOqCnvA0T/kaSl8=,tag:wnChRL2+8W8sG3GddaAwIQ==,type:str]
    deeper_boolean: ENC[AES256_GCM,data:t5rDBuc=,iv:UQ1A831uTDQHKeHRx1WawLXxcB9XqrvcrxhiDWbncwI=,tag:p0ZCMjLRpNNH1Oqm++IoKA==,type:bool]
sops:
  kms: []
  gcp_kms: []
  azure_kv: []
  hc_vault: []
  age:
    - recipient: age1cxgy6y5vctq5vy6dn4s3takyexa4n83cueuv8m0j0ngv2w6ff39qfguyjn
      enc: |
        -----BEGIN AGE ENCRYPTED FILE-----
        YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSAwdjh1RlcwaXo1eE1TbVl5
        bGhwUFFzNWc3UllDbDZJRlFyaTJ6amJ4amxRCnllZEkvMzQveS90bVBRZGFJK0V5
        WlRjSk5XVjlUQ2Z5N3B4WDE1aVZVOVkKLS0tIGx2bmRWdnJWVU1YT0toN2RVQ3o3
        aDlXdXJPd3V0TkJPQmppaUVMenhWVWsKNGQhU4yladZmUhwMN+B8afbs+ORMSv7G
        32lavv1zpYY0T+kW8Bl2vdKMpNCDPT63yvxvDWI+ooxW22m9T9yAug==
        -----END AGE ENCRYPTED FILE-----
  lastmodified: "2024-11-27T22:06:07Z"
  mac: ENC[AES256_GCM,data:Ose6ruBBfUnHLzmbc84HFuUtgHDJDZmHOSQ+7rVt3kTTrP3Q3XljH6nBnqK3nDCRj3grCKjA/4AMtNqofx2LnYJG4cfL07AFQqWCX8EoorLWI7z9wFyj4x/lm+FM/V9R66kKLK10wtn1XOGFoOY6Tmpx1vV/+HwY56XQJAipWCE=,iv:cNzwQ2bBOhG4Ttot6b2c0zJRxRc4b8T8bcu4W8irmWA=,tag:2wsmJ2EF1UiX1ZS21NARRw==,type:str]
  pgp: []
  unencrypted_suffix: _unencrypted
  version: 3.9.1
`;

const NOBBS_MAC_MISMATCH = String.raw`abc: ENC[AES256_GCM,data:U4WP,iv:dPjYdJKVo1dE5bt1NVfIv2rQf3iapI9oebRgnSAaUxY=,tag:KdLHWoH5WZ9jj4VQkHC4gQ==,type:str]
integers: ENC[AES256_GCM,data:xkQK,iv:BtmxqpcAiBhgPJSq4qdF0cGcbQ53Z1Wzfzfa0UOrx68=,tag:SYaKiZR15eV/qpSwt3BU/Q==,type:int]
floats: ENC[AES256_GCM,data:Fns0OsiaHKFNmb9SLDk=,iv:8PwwX4fu1vrcWuoJrOyjLCR+08xHXm7LVE2MOrOBlvY=,tag:KDeXPf3GrkagNWtCN3H6rQ==,type:float]
truthy: ENC[AES256_GCM,data:oNwdlQ==,iv:5hVPDzgNDfka0urrPYm1Q2MNXEuClXNIBOOtRcrNksc=,tag:9X9QY3y16YOhaTqb0zzWNA==,type:bool]
sops:
  kms: []
  gcp_kms: []
  azure_kv: []
  hc_vault: []
  age:
    - recipient: age1cxgy6y5vctq5vy6dn4s3takyexa4n83cueuv8m0j0ngv2w6ff39qfguyjn
      enc: |
        -----BEGIN AGE ENCRYPTED FILE-----
        YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSA3UDc4YVZTRnc2N3dlN0Y3
        aG1EV0Y2QnArQVVmTzRIa0RCMzgyNU1YSWlVCllGcXF3MUpmdHNQUVJtRGtxQnVx
        QjI2RG5qNHlzMUdENkFsaGlQOWFwWWsKLS0tIE9uRXc4Smp6VGJkSDhFeXdXZG85
        em9INUZOb0xRUUI1QzNPaFJsRkhsTFkKjPg5zkIGntQ5E5nUUUOhpYw96xg/vPHf
        e16jm0POpVctwfVDkSEfR9HZneQuuF0e3JJZ3xnS+Dp/Vr4UbdTCcg==
        -----END AGE ENCRYPTED FILE-----
  lastmodified: "2024-11-27T20:58:06Z"
  mac: ENC[AES256_GCM,data:f8qkVOCWPnb0NedJaPc5oyiGqNc0J1goWm66P5L0d0PdlqVH8nPTi66wrQyONY/TOaH1cgPO2kIoVa5Aw8owkNuJ8z8R+7aRp/cgjemWAd1+paIb81Z0eSa2MyE43pTcvKQJ6u+lmm7RiKA5a3oTsr1f0mTVYNBxVT5KC2U8KVg=,iv:ilgc0AmkqxXEzro1Iwx+Nybi8fs9S9BchDWNC39kNJg=,tag:o/wr22Wx10m8pim+0KH6Og==,type:str]
  pgp: []
  unencrypted_suffix: _unencrypted
  version: 3.9.1
`;

const ROPS_UNENCRYPTED_SUFFIX = String.raw`a:
  b_unencrypted:
    a: aaa
    b: aaa
    c:
    - 123
    - 456
  c_encrypted: ENC[AES256_GCM,data:jJw9,iv:zSVPp6jWfJmAG63pkMyZC5wCSeQXJvJ1AgAPEzaxIGE=,tag:0wLbxHEaJ/VKS0NtwtD94g==,type:str]
unencrypted_not: ENC[AES256_GCM,data:Bh/l,iv:ofV3kn2chqI58+EAUd8xnhwfc0YOeGTdzdfUOrPySqY=,tag:Mxn9s6H2bdFgmow3cuAVTA==,type:str]
sops:
  age:
  - recipient: age1se5ghfycr4n8kcwc3qwf234ymvmr2lex2a99wh8gpfx97glwt9hqch4569
    enc: |
      -----BEGIN AGE ENCRYPTED FILE-----
      YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBiNnl2dXZWdTM0c1IwTlpy
      TEp6clBlMkFqMExvU3FnM2gvbXZGTjN4RGxZCmhLWEJIcml5MUtXcHNSWkZOUjdE
      dE12RUhJMVJTM1didmY1WVJSNXBqQ2sKLS0tIFlzLzh6TjN5ZS9FUk5pY3dwWjc3
      M0k2WGZ4QXcvdERNczlzWTgrbEZoeE0K4lB0JlB7GSeG6MKjPEmn0abuMWH2m2ck
      aLJqc9i2pXVqvMh3yHMehpumyrtwwNtWpFC6qzKTUejGA9ZOH26csQ==
      -----END AGE ENCRYPTED FILE-----
  lastmodified: 2023-12-26T17:57:37Z
  mac: ENC[AES256_GCM,data:lMKBbtVlzwBziw+4hHH6OvxFDrAXfKKhk1n7egJe79JghYCnNjuPt7y3RT7NUGUcI72f6hnZJ7zjOBsNh3y3Uz0zrVH0NeHhCZ/RA4rAf3ohI7IZmZAY7BL2HSXaFlvYu3XmI5q3GUtqCW1gSUB2GmiFRAexSzWUMp8sjidicVU=,iv:6vUN0afSE9HjVQTpVIU7ciMcYFY6ylApcidym3rRKik=,tag:80x4wKw9b0cXv24PAUnakw==,type:str]
  unencrypted_suffix: unencrypted
`;

const ROPS_MAC_ONLY = String.raw`a_encrypted: ENC[AES256_GCM,data:IA46,iv:Ap9PrtKlfDVKOh/ExGZoXl8Qh85iQrL3iFtpRRurYv8=,tag:rEnl+xiPY5/v+7G/kQNkdQ==,type:str]
b_unencrypted:
    a: aaa
    b:
        - 123
        - 456
c_encrypted: ENC[AES256_GCM,data:+uP6,iv:wYcY2h8IGCn0CW23ZeqMct6SnGYQgmnW21iQL1rA03U=,tag:yeiq5D6oElI05nPihnWptQ==,type:str]
d_unencrypted: aaa
sops:
    age:
        - recipient: age1se5ghfycr4n8kcwc3qwf234ymvmr2lex2a99wh8gpfx97glwt9hqch4569
          enc: |
            -----BEGIN AGE ENCRYPTED FILE-----
            YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBPTXdHZnZ0SkhGZ3UydzlZ
            RklUWXorWk1Kb3QwR29qWktqVHh1enV0RndvCit0cHQxRVBNTEdZSUxNYWJxT0Qz
            eWRKOVJWcUQ3am1mZGF6UExhT2JqMmcKLS0tIFNZWG5ML1hVSWVVMG1QbGwxQmFh
            UE1nSm01Q2lObzlwMDBmazJtWG9qSVEKdHkhmvoMB4JfSztonfNqUGM4PuQs+T16
            9+A3/jb3bGQIbGcZfC8p7662USXWdAYDagLGYZVSf02xaEsjhlP5TQ==
            -----END AGE ENCRYPTED FILE-----
    lastmodified: "2023-12-27T11:13:48Z"
    mac: ENC[AES256_GCM,data:N/tCLvJawgY4qYPtu2D541yl8+YMRtrTETqAvkQih4EkR2N3YZB0D6XfcFxOHei6kDKEXc4HNPN5vwbaq8U5DeOGfSH00ZLdh85I1Ldh8Jbxnrtd+Kkti8chD2dZrD66c++oZb70z/jaM7+U37tOXM2Zy4SrRbIsUWjJ6LTY5Cs=,iv:NkvFXhw7M0DpksLeRgWdpPAxw1cx64rU+kbayQDMO3A=,tag:7uI8YXb3NPBuWtXIJWv86g==,type:str]
    unencrypted_suffix: _unencrypted
    mac_only_encrypted: true
`;

const ROPS_ENCRYPTED_REGEX = String.raw`a:
  encrypted_1:
    a: ENC[AES256_GCM,data:63NN,iv:tMGNl1clK1rQt7oy2huw+YJ+361iSpV2F4zT07ZPZAk=,tag:MPkuD6FNDqlr+2nuu/b61g==,type:str]
    b: ENC[AES256_GCM,data:1CSH,iv:FbmtCB0SV5d5m1Q1Rr1RG5bSP1kBtlD5ggQUkAbrYOM=,tag:5N/qZ2dX4+RiJo6jmpuQyw==,type:str]
  not_encrypted: aaa
b: aaa
sops:
  age:
  - recipient: age1se5ghfycr4n8kcwc3qwf234ymvmr2lex2a99wh8gpfx97glwt9hqch4569
    enc: |
      -----BEGIN AGE ENCRYPTED FILE-----
      YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSAvMlNwZnp6c2k1M2x0Zm5R
      TndCSDBMcFhNZml6V0lCMDhGNk9zSlJNa1NzCk9tbEw0ZXNwVlBVNWY4cEZ3QVY0
      MEVmajlYWFdITXFnZTBoQUkvcXFMamcKLS0tIExTRmRhL05vR295UVhpQXAxTzJl
      VWNWR1ZTeGVjS0drQzBPdFo3SFJPekEKQNeCRUtk4Z1BLF992WbqTUUpgoxsZfhL
      fBNBMSsTksIRVENtclN+/0Ja0nTpGAa/LkR7G9pg2cJIewTTX+RjiQ==
      -----END AGE ENCRYPTED FILE-----
  lastmodified: 2023-12-26T17:50:08Z
  mac: ENC[AES256_GCM,data:DD0b27Jih05cCdjug/+al0cuOIef99UF/bCn0SJbBL593NOEJ4N3CS8nQKzH17umdCRq0pZzESp31FaIyMkifU3WJHDkFc6I8ZHzVr0t86JbCaCv8LiUH5YesMwo8VFhYDCL6+ODHVZ8IZ7Eu5X1SpwyisYWDBKG9G3+wols4dk=,iv:3bkd03+k2ereCrvcU9c9AHhDOBWlVyp/jnP8UONCL1o=,tag:h6HsMmNBz7zPIl4+B2BiUA==,type:str]
  encrypted_regex: ^encrypted
`;

const ROPS_EMPTY = String.raw`string_value: ''
null_value: null
array_value:
- ''
- null
sops:
  age:
  - recipient: age1se5ghfycr4n8kcwc3qwf234ymvmr2lex2a99wh8gpfx97glwt9hqch4569
    enc: |
      -----BEGIN AGE ENCRYPTED FILE-----
      YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBxenJIb2czSDZXdnVGYU0y
      bjAvNkxIOGlabHpCMXJ3ZjR4cGlRdEFkc21NClZmUjBNVW5vdmdWeTZQS2EydGRB
      NFhDR2NTSDgrc1paR1pyUkZKYkhmdE0KLS0tIDhLeWtYNThaSVhKRmJPd0NJaENq
      dy9lcXBMRFBGd2JiSWlSc1R3UE9VMTAKgBEgE5onC//sordnU09S2tCMtmZuH1vc
      0hgyYd9m9rh82aD9ASdvkL79N2rMUjXLejy7PPfgAG1IsL+KssK4Pw==
      -----END AGE ENCRYPTED FILE-----
  lastmodified: 2026-05-17T17:54:30Z
  mac: ENC[AES256_GCM,data:Vf7YZzDRupUrA8RlV2wokr1Nzjt2OwSHHTPIiS6OuJEDpUbjwT6Crw5Q+y+L6dWeUkjfLqB0BOj5vn8JTLcF5baQ226ettlh2A4aOPN9yiTDqjugXK3NAFbLgAN/IbDwNKrxLbO/R3mDQbHqONiYqJCFnmeRIPYRAyLfMGeBpOI=,iv:V8vaTs00G5fDtQWNL9iVwioOy0RCyA+KsaQyzOf/dN0=,tag:UfoMKk4CLICGcPFTINX3/A==,type:str]
`;

const ROPS_EXAMPLE = String.raw`hello: ENC[AES256_GCM,data:8qKuCV7HkZSpWQj8YrpeC1bi28WkOcA/De3O6ITe7tFKqj1h1QXN+qTm+hQOqA==,iv:YIKmKtTqVwenr0pZwIBMeIkLhdIUYjylqsYesHY20T4=,tag:F7JDsbStittMNkW67nxxVw==,type:str]
example_key: ENC[AES256_GCM,data:dlBJhoPbBr+/7DUcDA==,iv:NHLG+AGcXdkoUHqG1bnOr6jy+rCu9Dwnqgm78+69W4M=,tag:D8V48sWQNsvJ39n/Dqhxtg==,type:str]
example_array:
- ENC[AES256_GCM,data:SpMMITB9xz3BV9IikVs=,iv:6i59WuNz7HXvKkOEsUvTOAMpUDWt+Yr/7VLZiZpuUQY=,tag:WW75SSkKbnzU+j97OeqtUg==,type:str]
- ENC[AES256_GCM,data:X3v+SseqhnHVUj/coFA=,iv:cH10NnQpN43bsK88B7216JW2ksGzSUdUZBVf6WrG5ZE=,tag:IhIWznMk05PROaR9wBzazw==,type:str]
example_number: ENC[AES256_GCM,data:jJDmeUep5pLyrA==,iv:GShxk0uB8mIIJFyRbMAfvhmvD459q3l5HVLmho+6dPs=,tag:U5pKd0A5xAbGhQjxkJJXKw==,type:float]
example_booleans:
- ENC[AES256_GCM,data:fY3cXA==,iv:WD5F3zC+JSGMrYuDv0mwxIJ5/8IuAr1pTn3Hw3xcNBk=,tag:8sXFUDmSoRi+Hrlo5HxM6g==,type:bool]
- ENC[AES256_GCM,data:QN1RgWA=,iv:Pxpghl71bAX3ZE/gxkCDWSUCf8/KGS9uncoQ598haIM=,tag:Gk++6TuD+eN/m0b8qkiW6Q==,type:bool]
sops:
  age:
  - recipient: age1se5ghfycr4n8kcwc3qwf234ymvmr2lex2a99wh8gpfx97glwt9hqch4569
    enc: |
      -----BEGIN AGE ENCRYPTED FILE-----
      YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBLRldWU0RNM3NQOVBFOFdi
      a0JBd2hRa2dTa1Nuc2NLNjVsNHc4YWJJK3k0ClJPRktvZS91UmtyK3NTV2tycWxO
      Wm4zWURqT3RVYXRTb0FHb1p4UGRrYmcKLS0tIDNFK3ZjUTZVclBaTlhFNSs5TEQ1
      elJ6QmRiMmFzY0dETWRzWFcxck9yTzQKlEuRma1842fqnnveiDqLwjhMXuiICQ/T
      Ededl+gNtC1YBaNBMzEgQnmYvBRiTG/dZToIFHE4Dsru5+yQvh/s4g==
      -----END AGE ENCRYPTED FILE-----
  lastmodified: 2023-12-25T10:31:01Z
  mac: ENC[AES256_GCM,data:71P4QU1+TCVHWmuOUIKP8ZTFkEo1fxJU/N5b7pxM8iKZ5U46vi+cOeDas9HBTfq9QLRnTVWs9M0WLfcksqnq/fTo2111/kDIBsi97G/BtBcS615s6AeEOcukn52F7yuFT+jAY5P5Jbio1dxtfBevbBKnhleXXkCo7z9Dub7k/R8=,iv:Q/SVo4J3ZVlqXAZC+BticPJhXJZTK4DHHuMh8kl82Z4=,tag:fCyM4KEwGG+tWqqw/uqD0Q==,type:str]
`;

// ---------------------------------------------------------------------------------------------------
// An encrypter that writes what sops writes (sops.go Tree.Encrypt, aes/cipher.go Encrypt).

type PlainValue = string | number | boolean | null | PlainValue[] | { [k: string]: PlainValue };

interface EncryptOptions {
  readonly recipients: readonly string[];
  readonly format?: 'yaml' | 'json';
  readonly unencryptedSuffix?: string;
  readonly encryptedRegex?: string;
  readonly macOnlyEncrypted?: boolean;
  readonly lastmodified?: string;
}

/** What a value encrypts as, and hashes as: ToBytes / cipher.go's type names. */
function goBytes(v: string | number | boolean): { bytes: Buffer; type: string } {
  if (typeof v === 'string') return { bytes: Buffer.from(v, 'utf8'), type: 'str' };
  if (typeof v === 'boolean') return { bytes: Buffer.from(v ? 'True' : 'False'), type: 'bool' };
  if (Number.isSafeInteger(v)) return { bytes: Buffer.from(String(v)), type: 'int' };
  return { bytes: Buffer.from(goFormatFloat(v)), type: 'float' };
}

function encryptValue(v: string | number | boolean, key: Buffer, aad: string): string {
  if (v === '') return '';
  const { bytes, type } = goBytes(v);
  const iv = randomBytes(32);
  const c = createCipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
  c.setAAD(Buffer.from(aad, 'utf8'));
  const data = Buffer.concat([c.update(bytes), c.final()]);
  return `ENC[AES256_GCM,data:${data.toString('base64')},iv:${iv.toString('base64')},tag:${c.getAuthTag().toString('base64')},type:${type}]`;
}

async function sopsEncrypt(
  plain: Record<string, PlainValue>,
  o: EncryptOptions,
): Promise<{ text: string; dataKey: Buffer }> {
  const dataKey = randomBytes(32);
  const hash = createHash('sha512');
  if (o.macOnlyEncrypted) hash.update(createHash('sha256').update('sops').digest());
  const suffix = o.unencryptedSuffix ?? '_unencrypted';
  const re = o.encryptedRegex === undefined ? undefined : new RegExp(o.encryptedRegex);
  const should = (keys: string[]) => (re ? keys.some((k) => re.test(k)) : !keys.some((k) => k.endsWith(suffix)));
  const walk = (v: PlainValue, keys: string[]): PlainValue => {
    if (v === null) return null;
    if (Array.isArray(v)) return v.map((x) => walk(x, keys));
    if (typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x, [...keys, k])]));
    const encrypted = should(keys);
    if (!o.macOnlyEncrypted || encrypted) hash.update(goBytes(v).bytes);
    return encrypted ? encryptValue(v, dataKey, `${keys.join(':')}:`) : v;
  };
  const tree = walk(plain, []) as Record<string, PlainValue>;
  const lastmodified = o.lastmodified ?? new Date().toISOString().replace(/\.[0-9]+Z$/, 'Z');
  const mac = encryptValue(hash.digest('hex').toUpperCase(), dataKey, lastmodified);
  const age: { recipient: string; enc: string }[] = [];
  for (const r of o.recipients) {
    const e = new Encrypter();
    e.addRecipient(r);
    age.push({ recipient: r, enc: armor.encode(await e.encrypt(dataKey)) });
  }
  const sops = {
    age,
    lastmodified,
    mac,
    ...(re ? { encrypted_regex: o.encryptedRegex! } : { unencrypted_suffix: suffix }),
    ...(o.macOnlyEncrypted ? { mac_only_encrypted: true } : {}),
    version: '3.9.1',
  };
  const doc = { ...tree, sops };
  return { text: o.format === 'json' ? `${JSON.stringify(doc, null, '\t')}\n` : stringify(doc), dataKey };
}

async function newIdentity(): Promise<{ identity: string; recipient: string }> {
  const identity = await generateX25519Identity();
  return { identity, recipient: await identityToRecipient(identity) };
}

/** Every error message (and property) the tests saw; the last test checks that no value is in any. */
const seenErrors: string[] = [];
function remember(e: unknown): void {
  seenErrors.push(
    String((e as Error).message),
    JSON.stringify(e),
    ...Object.values(e as object).map((v) => (typeof v === 'string' ? v : (JSON.stringify(v) ?? ''))),
  );
}
/** Values that are secret in some test below. */
const SECRET_VALUES = [
  'this is a secret',
  'example string',
  'nested example',
  'deeper example',
  'Welcome to SOPS',
  'example_value1',
  's3cr3t-pg-admin',
  'r3dis-admin-pw',
  'my5ql-admin-pw',
  'hunter2-in-url',
  'qs-pa55',
  'mongo-pw-in-url',
  'plain-Pa55word',
  'cleartext-pg',
  'tampered-value',
  'enc-test-value',
  'other-secret-value',
  'swapped-secret',
];

async function sopsFails(
  t: Test,
  p: Promise<unknown>,
  code: SopsErrorCode,
  message?: RegExp,
): Promise<SopsError | undefined> {
  try {
    await p;
    t.fail(`expected ${code}`);
    return undefined;
  } catch (e) {
    remember(e);
    t.ok(e instanceof SopsError, 'a SopsError');
    t.equal((e as SopsError).code, code, (e as Error).message);
    if (message) t.match((e as Error).message, message);
    return e as SopsError;
  }
}

const plainOf = (v: unknown): unknown => JSON.parse(JSON.stringify(v));

/** `text` with `from` replaced once by `to`; fails the test if `from` is not there. */
function edit(t: Test, text: string, from: string | RegExp, to: string): string {
  const out = text.replace(from, to);
  t.not(out, text, `the edit of ${String(from)} applies`);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// The SOPS reader

t.test('files written by sops open with their keys, with the values sops wrote', async (t) => {
  const y = await openSops(HUMPHD_YAML, HUMPHD_KEY, { format: 'yaml' });
  t.same(plainOf(y.data), { secret: 'this is a secret' });
  t.equal(y.get('secret')?.encrypted, true);

  const dir = tempDir(t);
  writeFileSync(path.join(dir, 'secret.enc.json'), HUMPHD_JSON);
  const j = await openSopsFile(path.join(dir, 'secret.enc.json'), HUMPHD_KEY); // .json: the JSON store
  t.equal(j.format, 'json');
  // sops 3.8 read every JSON number as a float64: "int" is type:float and hashes as "7".
  t.same(plainOf(j.data), {
    secret: 'this is a secret',
    string: 'string',
    int: 7,
    float: 3.14,
    boolean: true,
    complex: { value: 'this is a secret', array: ['one', 'two', 'three'] },
  });
  t.equal(j.get('complex.array.2')?.value, 'three');
  t.equal(j.get(['complex', 'array', 0])?.value, 'one');
  t.equal(j.get('complex.array.3'), undefined);
  t.equal(j.get('complex.nope'), undefined);

  const c = await openSops(NOBBS_COMPLEX, NOBBS_KEY);
  t.same(plainOf(c.data), {
    string_key: 'example string',
    integer_key: 42,
    float_key: 3.14,
    boolean_key: true,
    null_key: null,
    list_key: ['item1', 'item2', 3, false, null],
    object_key: {
      nested_string: 'nested example',
      nested_integer: 100,
      nested_list: ['nested item1', 200],
      nested_object: { deeper_string: 'deeper example', deeper_boolean: false },
    },
  });
  t.equal(typeof c.data.integer_key, 'number');
  t.equal(c.get('null_key')?.encrypted, false, 'a null is neither encrypted nor hashed');

  const ex = await openSops(ROPS_EXAMPLE, ROPS_KEY);
  t.same(plainOf(ex.data), {
    hello: 'Welcome to SOPS! Edit this file as you please!',
    example_key: 'example_value',
    example_array: ['example_value1', 'example_value2'],
    example_number: 1234.56789,
    example_booleans: [true, false],
  });

  // unencrypted_suffix (here "unencrypted"): the values under such a key are in clear, and in the MAC.
  const u = await openSops(ROPS_UNENCRYPTED_SUFFIX, ROPS_KEY);
  t.same(plainOf(u.data), {
    a: { b_unencrypted: { a: 'aaa', b: 'aaa', c: [123, 456] }, c_encrypted: 'xxx' },
    unencrypted_not: 'xxx',
  });
  t.equal(u.get('a.b_unencrypted.c.1')?.encrypted, false);
  t.equal(u.get('a.c_encrypted')?.encrypted, true);

  // encrypted_regex: only values under a matching key are encrypted.
  const r = await openSops(ROPS_ENCRYPTED_REGEX, ROPS_KEY);
  t.same(plainOf(r.data), { a: { encrypted_1: { a: 'xxx', b: 'xxx' }, not_encrypted: 'aaa' }, b: 'aaa' });
  t.equal(r.get('a.encrypted_1.a')?.encrypted, true);
  t.equal(r.get('b')?.encrypted, false);

  // mac_only_encrypted: the MAC starts from SHA-256("sops") and covers only encrypted values.
  const m = await openSops(ROPS_MAC_ONLY, ROPS_KEY);
  t.equal(m.macOnlyEncrypted, true);
  t.same(plainOf(m.data), {
    a_encrypted: 'xxx',
    b_unencrypted: { a: 'aaa', b: [123, 456] },
    c_encrypted: 'xxx',
    d_unencrypted: 'aaa',
  });

  // Empty strings are never encrypted; nulls are kept.
  const e = await openSops(ROPS_EMPTY, ROPS_KEY);
  t.same(plainOf(e.data), { string_value: '', null_value: null, array_value: ['', null] });
});

t.test('a file sops itself refuses for its MAC is refused', async (t) => {
  // nobbs/terraform-provider-sops keeps this fixture to test that decryption fails "to verify data integrity".
  await sopsFails(t, openSops(NOBBS_MAC_MISMATCH, NOBBS_KEY), 'SOPS_MAC_MISMATCH');
});

t.test('MAC: editing an encrypted value, swapping or reordering values, removing a key', async (t) => {
  // A changed ciphertext: AES-GCM refuses the value itself.
  const flipped = edit(t, NOBBS_COMPLEX, 'data:aKfYMxhSP+g58YfrROU=', 'data:aKfYMxhSQ+g58YfrROU=');
  await sopsFails(t, openSops(flipped, NOBBS_KEY), 'SOPS_MAC_MISMATCH', /string_key does not authenticate/);

  // Two encrypted values swapped between keys: the path is the additional data, so neither opens.
  const a = /nested_string: (ENC\[[^\]]+\])/.exec(NOBBS_COMPLEX)![1]!;
  const b = /deeper_string: (ENC\[[^\]]+\])/.exec(NOBBS_COMPLEX)![1]!;
  const swapped = NOBBS_COMPLEX.replace(a, 'SWAP').replace(b, a).replace('SWAP', b);
  await sopsFails(
    t,
    openSops(swapped, NOBBS_KEY),
    'SOPS_MAC_MISMATCH',
    /object_key\.nested_string does not authenticate/,
  );

  // Two list items swapped: each still authenticates (list indices are not in the path), the MAC
  // (over the values in order) does not.
  const i1 = /list_key:\n {2}- (ENC\[[^\]]+\])/.exec(NOBBS_COMPLEX)![1]!;
  const i2 = /list_key:\n {2}- ENC\[[^\]]+\]\n {2}- (ENC\[[^\]]+\])/.exec(NOBBS_COMPLEX)![1]!;
  const reordered = NOBBS_COMPLEX.replace(i1, 'SWAP').replace(i2, i1).replace('SWAP', i2);
  await sopsFails(t, openSops(reordered, NOBBS_KEY), 'SOPS_MAC_MISMATCH', /MAC does not match/);

  // A key (and its encrypted value) removed.
  const removed = edit(t, NOBBS_COMPLEX, /^string_key: .*\n/m, '');
  await sopsFails(t, openSops(removed, NOBBS_KEY), 'SOPS_MAC_MISMATCH', /MAC does not match/);
  // A key with a value in clear removed (the MAC covers it too).
  const removedClear = edit(t, ROPS_UNENCRYPTED_SUFFIX, /^ {4}b: aaa\n/m, '');
  await sopsFails(t, openSops(removedClear, ROPS_KEY), 'SOPS_MAC_MISMATCH');
  // SOPS's rule, stated: a null is not hashed, so removing a key whose value is null goes unnoticed.
  const removedNull = edit(t, NOBBS_COMPLEX, /^null_key: null\n/m, '');
  t.notOk('null_key' in (await openSops(removedNull, NOBBS_KEY)).data);

  // sops.lastmodified is the MAC's additional data; sops.mac removed.
  await sopsFails(
    t,
    openSops(edit(t, NOBBS_COMPLEX, '2024-11-27T22:06:07Z', '2024-11-27T22:06:08Z'), NOBBS_KEY),
    'SOPS_MAC_MISMATCH',
    /lastmodified/,
  );
  await sopsFails(t, openSops(edit(t, NOBBS_COMPLEX, /^ {2}mac: .*\n/m, ''), NOBBS_KEY), 'SOPS_MAC_MISMATCH', /no MAC/);

  // A value replaced by another one correctly encrypted with the data key (as a person with the key
  // editing by hand would): it decrypts, the MAC does not match.
  const me = await newIdentity();
  const { text, dataKey } = await sopsEncrypt(
    { db: { admin: 'enc-test-value', other: 'other-secret-value' } },
    { recipients: [me.recipient] },
  );
  t.equal((await openSops(text, me.identity)).get('db.admin')?.value, 'enc-test-value');
  const oldValue = /admin: (ENC\[[^\]]+\])/.exec(text)![1]!;
  const replaced = text.replace(oldValue, encryptValue('tampered-value', dataKey, 'db:admin:'));
  await sopsFails(t, openSops(replaced, me.identity), 'SOPS_MAC_MISMATCH', /MAC does not match/);
});

t.test('MAC: values in clear are covered, unless mac_only_encrypted', async (t) => {
  // unencrypted_suffix files: sops hashes the clear values too (Tree.Decrypt: !MACOnlyEncrypted || encrypted).
  const edited = edit(t, ROPS_UNENCRYPTED_SUFFIX, /^ {4}a: aaa$/m, '    a: aab');
  await sopsFails(t, openSops(edited, ROPS_KEY), 'SOPS_MAC_MISMATCH', /MAC does not match its values/);
  const editedInt = edit(t, ROPS_UNENCRYPTED_SUFFIX, '- 456', '- 457');
  await sopsFails(t, openSops(editedInt, ROPS_KEY), 'SOPS_MAC_MISMATCH');
  const editedRegex = edit(t, ROPS_ENCRYPTED_REGEX, /^b: aaa$/m, 'b: bbb');
  await sopsFails(t, openSops(editedRegex, ROPS_KEY), 'SOPS_MAC_MISMATCH');

  // mac_only_encrypted: the clear values may change (by design of that option), encrypted ones may not.
  const clearEdited = edit(t, ROPS_MAC_ONLY, 'd_unencrypted: aaa', 'd_unencrypted: changed');
  t.equal((await openSops(clearEdited, ROPS_KEY)).data.d_unencrypted, 'changed');
  const encRemoved = edit(t, ROPS_MAC_ONLY, /^c_encrypted: .*\n/m, '');
  await sopsFails(t, openSops(encRemoved, ROPS_KEY), 'SOPS_MAC_MISMATCH', /encrypted values/);
  // ...and a file whose mac_only_encrypted flag is removed no longer matches (the hash starts differently).
  await sopsFails(
    t,
    openSops(edit(t, ROPS_MAC_ONLY, /^ {4}mac_only_encrypted: true\n/m, ''), ROPS_KEY),
    'SOPS_MAC_MISMATCH',
  );
  // Comments are not in the MAC.
  t.ok(await openSops(`# a comment\n${ROPS_EXAMPLE.replace('example_key:', '# another\nexample_key:')}`, ROPS_KEY));
});

t.test('the encrypter of these tests writes what the reader (and sops) reads: YAML, JSON, rules', async (t) => {
  const me = await newIdentity();
  const plain = {
    db: {
      admin: 'enc-test-value',
      port: 5432,
      ratio: 0.25,
      big: 1e21,
      tiny: 1e-7,
      on: true,
      off: false,
      empty: '',
      nothing: null,
    },
    list: ['x', 2, { deep: 'y' }],
    host_unencrypted: 'db.internal',
    unicode: 'pässwörd ✓',
  };
  for (const format of ['yaml', 'json'] as const) {
    const { text } = await sopsEncrypt(plain, { recipients: [me.recipient], format });
    const doc = await openSops(text, me.identity, { format });
    t.same(plainOf(doc.data), plain, format);
    t.equal(doc.get('host_unencrypted')?.encrypted, false);
    t.equal(doc.get('db.admin')?.encrypted, true);
    t.equal(doc.get('list.2.deep')?.encrypted, true);
  }
  const regex = await sopsEncrypt(
    { data: { password: 'enc-test-value' }, metadata: { name: 'x', replicas: 3 } },
    { recipients: [me.recipient], encryptedRegex: '^(data|stringData)$' },
  );
  const rd = await openSops(regex.text, me.identity);
  t.equal(rd.get('data.password')?.encrypted, true);
  t.equal(rd.get('metadata.replicas')?.value, 3);
  await sopsFails(t, openSops(edit(t, regex.text, 'replicas: 3', 'replicas: 4'), me.identity), 'SOPS_MAC_MISMATCH');
  // A file encrypted to two recipients opens with either identity.
  const other = await newIdentity();
  const two = await sopsEncrypt({ k: 'enc-test-value' }, { recipients: [other.recipient, me.recipient] });
  t.equal((await openSops(two.text, me.identity)).data.k, 'enc-test-value');
  t.equal((await openSops(two.text, other.identity)).data.k, 'enc-test-value');
  // Fractional seconds and a +00:00 offset in lastmodified: the additional data is Go's RFC 3339 form.
  const frac = await sopsEncrypt(
    { k: 'enc-test-value' },
    { recipients: [me.recipient], lastmodified: '2026-11-26T10:00:00Z' },
  );
  t.ok(await openSops(frac.text.replace('2026-11-26T10:00:00Z', '2026-11-26T10:00:00.123+00:00'), me.identity));
});

t.test('values in clear are typed as sops (yaml.v3) types them, for the MAC', async (t) => {
  const me = await newIdentity();
  // The MAC is computed over Go's values: 0777 is the int 511, 0x1F 31, 1_000 1000, +5 5, 1.50 the float 1.5,
  // yes/on/no strings, 2026-01-02 a string, ~ null (not hashed), "007" a string.
  const { text } = await sopsEncrypt(
    {
      secret: 'enc-test-value',
      o_unencrypted: 511,
      h_unencrypted: 31,
      u_unencrypted: 1000,
      p_unencrypted: 5,
      f_unencrypted: 1.5,
      e_unencrypted: 1200,
      y_unencrypted: 'yes',
      d_unencrypted: '2026-01-02',
      n_unencrypted: null,
      q_unencrypted: '007',
      t_unencrypted: true,
    },
    { recipients: [me.recipient] },
  );
  let written = text;
  for (const [from, to] of [
    ['o_unencrypted: 511', 'o_unencrypted: 0777'],
    ['h_unencrypted: 31', 'h_unencrypted: 0x1F'],
    ['u_unencrypted: 1000', 'u_unencrypted: 1_000'],
    ['p_unencrypted: 5', 'p_unencrypted: +5'],
    ['f_unencrypted: 1.5', 'f_unencrypted: 1.50'],
    ['e_unencrypted: 1200', 'e_unencrypted: 1.2e3'],
    ['n_unencrypted: null', 'n_unencrypted: ~'],
    ['t_unencrypted: true', 't_unencrypted: True'],
  ] as const) {
    written = edit(t, written, from, to);
  }
  const doc = await openSops(written, me.identity);
  t.same(plainOf(doc.data), {
    secret: 'enc-test-value',
    o_unencrypted: 511,
    h_unencrypted: 31,
    u_unencrypted: 1000,
    p_unencrypted: 5,
    f_unencrypted: 1.5,
    e_unencrypted: 1200,
    y_unencrypted: 'yes',
    d_unencrypted: '2026-01-02',
    n_unencrypted: null,
    q_unencrypted: '007',
    t_unencrypted: true,
  });
  // 1.2e3 is a float in Go ("1200" in the MAC) and 1200 an int ("1200"): the same bytes. "1.0" would hash as "1".
  t.equal(goFormatFloat(1e21), '1000000000000000000000');
  t.equal(goFormatFloat(1e-7), '0.0000001');
  t.equal(goFormatFloat(1234.56789), '1234.56789');
  t.equal(goFormatFloat(-0), '-0');
  t.equal(goFormatFloat(0.1 + 0.2), '0.30000000000000004');
  t.equal(goFormatFloat(5e-324), `0.${'0'.repeat(323)}5`);
  t.equal(goFormatFloat(NaN), 'NaN');
  t.equal(goFormatFloat(-Infinity), '-Inf');
  t.equal(goFormatFloat(123456789012345680000), '123456789012345680000');
});

t.test('the wrong identity, a file that is not SOPS, malformed and unsupported files', async (t) => {
  const me = await newIdentity();
  const stranger = await newIdentity();
  const { text } = await sopsEncrypt({ pg: 'enc-test-value' }, { recipients: [me.recipient] });
  const e = await sopsFails(
    t,
    openSops(text, stranger.identity, { name: 'admin.enc.yaml' }),
    'SOPS_NO_MATCHING_KEY',
    /admin\.enc\.yaml cannot be opened with the agent's identity: it is encrypted to age1/,
  );
  t.match(e?.message, me.recipient);
  await sopsFails(
    t,
    openSops(HUMPHD_YAML, ROPS_KEY),
    'SOPS_NO_MATCHING_KEY',
    /age1je6kjhzuhdjy3fqptpttxjh5k8q46vygzlgtpuq3030c947pc5tqz9dqvr, age19j4d6/,
  );
  const pgpOnly = edit(
    t,
    text,
    /^ {2}age:\n(?: {4}.*\n)+/m,
    '  pgp:\n    - fp: ABCDEF\n      enc: x\n      created_at: "2026-01-01T00:00:00Z"\n',
  );
  await sopsFails(
    t,
    openSops(pgpOnly, me.identity),
    'SOPS_NO_MATCHING_KEY',
    /not encrypted to any age recipient \(only pgp\)/,
  );

  await sopsFails(t, openSops('pg: password\nother: 1\n', me.identity), 'SOPS_NOT_SOPS', /no "sops" metadata/);
  await sopsFails(
    t,
    openSops('{"pg": "password"}', me.identity, { format: 'json' }),
    'SOPS_NOT_SOPS',
    /no "sops" metadata/,
  );
  await sopsFails(t, openSops('', me.identity), 'SOPS_NOT_SOPS', /empty/);
  await sopsFails(t, openSops('- a\n- b\n', me.identity), 'SOPS_NOT_SOPS', /not a mapping/);
  await sopsFails(t, openSops('a: [b\n', me.identity), 'SOPS_NOT_SOPS', /does not parse/);
  await sopsFails(t, openSops('{"a": 1,}', me.identity, { format: 'json' }), 'SOPS_NOT_SOPS', /JSON does not parse/);
  await sopsFails(t, openSops(randomBytes(64), me.identity), 'SOPS_NOT_SOPS');
  await sopsFails(t, openSopsFile('/nonexistent/admin.enc.yaml', me.identity), 'SOPS_NOT_SOPS', /cannot be read/);

  // A value that should be encrypted, in clear (someone replaced the ENC[...] by a password).
  await sopsFails(
    t,
    openSops(text.replace(/pg: ENC\[[^\]]+\]/, 'pg: tampered-value'), me.identity),
    'SOPS_CORRUPT',
    /pg should hold an encrypted value/,
  );
  await sopsFails(
    t,
    openSops(text.replace(/pg: ENC\[[^\]]+\]/, 'pg: 12345'), me.identity),
    'SOPS_CORRUPT',
    /pg should be encrypted but is a number in clear/,
  );
  await sopsFails(
    t,
    openSops(text.replace(/lastmodified: .*/, 'lastmodified: yesterday'), me.identity),
    'SOPS_CORRUPT',
    /lastmodified/,
  );
  await sopsFails(t, openSops(text.replace('pg:', 'pg: x\npg:'), me.identity), 'SOPS_CORRUPT', /duplicate key/);
  await sopsFails(
    t,
    openSops(
      text.replace('unencrypted_suffix: _unencrypted', 'unencrypted_suffix: _unencrypted\n  encrypted_regex: ^pg$'),
      me.identity,
    ),
    'SOPS_CORRUPT',
    /one of them/,
  );
  const json = (await sopsEncrypt({ pg: 'enc-test-value' }, { recipients: [me.recipient], format: 'json' })).text;
  await sopsFails(
    t,
    openSops(json.replace('"pg":', '"pg": "x",\n\t"pg":'), me.identity, { format: 'json' }),
    'SOPS_CORRUPT',
    /duplicate key/,
  );

  await sopsFails(
    t,
    openSops(
      text
        .replace('  lastmodified', '  encrypted_comment_regex: sops\n  lastmodified')
        .replace('  unencrypted_suffix: _unencrypted\n', ''),
      me.identity,
    ),
    'SOPS_UNSUPPORTED',
    /comments/,
  );
  await sopsFails(t, openSops(`x: &a [1]\ny: *a\n${text}`, me.identity), 'SOPS_UNSUPPORTED', /alias/);
  await sopsFails(t, openSops(`${text}---\n${text}`, me.identity), 'SOPS_UNSUPPORTED', /several YAML documents/);
  await sopsFails(t, openSops(`1: x\n${text}`, me.identity), 'SOPS_UNSUPPORTED', /not a string/);
  const groups = text.replace(
    /^ {2}age:\n((?: {4}.*\n)+)/m,
    (_, body: string) =>
      `  key_groups:\n    - age:\n${body.replace(/^(?=.)/gm, '    ')}    - age:\n${body.replace(/^(?=.)/gm, '    ')}`,
  );
  await sopsFails(t, openSops(groups, me.identity), 'SOPS_UNSUPPORTED', /2 key groups \(Shamir\)/);
  // One key group under key_groups is read like the top-level lists.
  const oneGroup = text.replace(
    /^ {2}age:\n((?: {4}.*\n)+)/m,
    (_, body: string) => `  key_groups:\n    - age:\n${body.replace(/^(?=.)/gm, '    ')}`,
  );
  t.equal((await openSops(oneGroup, me.identity)).data.pg, 'enc-test-value');
});

t.test('hostile SOPS files: key regexes and values are read in linear time', async (t) => {
  const me = await newIdentity();
  const long = `${'a'.repeat(40)}b`;
  const plain = { [long]: { v: 'plain-value' }, aaaa: 'enc-test-value', other: 'in clear' };
  // Encrypted with ^a*$, read with ^(a|a)*$ (the same keys match): backtracking, the 41-character key
  // alone takes 2^40 steps.
  const { text, dataKey } = await sopsEncrypt(plain, { recipients: [me.recipient], encryptedRegex: '^a*$' });
  const withRegex = (re: string) => text.replace(/encrypted_regex: .*/, () => `encrypted_regex: '${re}'`); // no $ patterns
  const doc = await openSops(withRegex('^(a|a)*$'), me.identity);
  t.same(plainOf(doc.data), plain);
  t.equal(doc.get('aaaa')?.encrypted, true);
  t.equal(doc.get([long, 'v'])?.encrypted, false);

  // What the linear-time engine cannot run, or runs differently from the u flag, is refused.
  await sopsFails(
    t,
    openSops(withRegex('^(a)\\1$'), me.identity),
    'SOPS_UNSUPPORTED',
    /encrypted_regex cannot be run in linear time \(it uses a backreference/,
  );
  await sopsFails(t, openSops(withRegex('^(?=a)'), me.identity), 'SOPS_UNSUPPORTED', /linear time/);
  await sopsFails(
    t,
    openSops(withRegex('^\\p{L}+$'), me.identity),
    'SOPS_UNSUPPORTED',
    /uses \\p, which rotor does not read/,
  );
  await sopsFails(t, openSops(withRegex('^\\u{61}+$'), me.identity), 'SOPS_UNSUPPORTED', /uses \\u\{\.\.\.\}/);
  await sopsFails(
    t,
    openSops(withRegex('[[:alpha:]]'), me.identity),
    'SOPS_UNSUPPORTED',
    /not a regular expression JavaScript can run the same way as Go/,
  );
  await sopsFails(
    t,
    openSops(withRegex('a'.repeat(257)), me.identity),
    'SOPS_UNSUPPORTED',
    /has 257 characters; rotor reads key regexes of at most 256/,
  );
  const astral = await sopsEncrypt(
    { 'k\u{1F511}': 'x', aaaa: 'enc-test-value' },
    { recipients: [me.recipient], encryptedRegex: '^a*$' },
  );
  await sopsFails(t, openSops(astral.text, me.identity), 'SOPS_UNSUPPORTED', /outside the Basic Multilingual Plane/);

  // The work of a regex on the keys is bounded: (regex length + 1) x (key length + 1) over the distinct keys.
  const re = `^(?:${Array.from({ length: 49 }, (_, i) => `x${i}`).join('|')}|a+)$`; // 194 characters
  const keys = (n: number) =>
    Object.fromEntries(
      Array.from({ length: n }, (_, i) => [`${'k'.repeat(95)}${String(i).padStart(4, '0')}`, 'in clear']),
    );
  const under = await sopsEncrypt(
    { ...keys(200), aaaa: 'enc-test-value' },
    { recipients: [me.recipient], encryptedRegex: re },
  );
  t.equal(
    (await openSops(under.text, me.identity)).get('aaaa')?.encrypted,
    true,
    '200 keys of 99 characters and "aaaa": 195 x 20,005 = 3,900,975 steps',
  );
  const over = await sopsEncrypt(
    { ...keys(300), aaaa: 'enc-test-value' },
    { recipients: [me.recipient], encryptedRegex: re },
  );
  await sopsFails(
    t,
    openSops(over.text, me.identity),
    'SOPS_UNSUPPORTED',
    /keys are too many or too long to try sops\.encrypted_regex on/,
  ); // 300 keys: 5,850,975

  // A float of a million digits and an "x": /[0-9]+\.?[0-9]*/ split the digits every way (quadratic).
  const iv = randomBytes(32);
  const c = createCipheriv('aes-256-gcm', dataKey, iv, { authTagLength: 16 });
  c.setAAD(Buffer.from('aaaa:', 'utf8'));
  const data = Buffer.concat([c.update(Buffer.from(`${'1'.repeat(1_000_000)}x`)), c.final()]);
  const float = `ENC[AES256_GCM,data:${data.toString('base64')},iv:${iv.toString('base64')},tag:${c.getAuthTag().toString('base64')},type:float]`;
  await sopsFails(
    t,
    openSops(
      text.replace(/aaaa: ENC\[[^\]]+\]/, () => `aaaa: ${float}`),
      me.identity,
    ),
    'SOPS_CORRUPT',
    /aaaa does not hold a valid float/,
  );
});

// ---------------------------------------------------------------------------------------------------
// The agent's configuration

interface Setup {
  dir: string;
  agent: { recipient: string; signingKey: string };
  daemon: { recipient: string; signingKey: string };
}

async function setup(t: Test): Promise<Setup> {
  const dir = tempDir(t);
  const agent = await generateKeys(path.join(dir, 'keys'));
  const daemon = await generateKeys(path.join(dir, 'daemon'));
  mkdirSync(path.join(dir, 'secrets'));
  return { dir, agent, daemon };
}

function configText(s: Setup, targets: string, head?: string): string {
  return `${head ?? `daemon: http://127.0.0.1:7700\nname: db-host-1\nkeyDir: keys\ndaemonSigningKey: "${s.daemon.signingKey}"\n`}targets:\n${targets}`;
}

function writeConfig(s: Setup, text: string, mode = 0o600): string {
  const file = path.join(s.dir, 'agent.yaml');
  writeFileSync(file, text);
  chmodSync(file, mode);
  return file;
}

async function configFails(t: Test, file: string, env: NodeJS.ProcessEnv = {}): Promise<AgentConfigProblem[]> {
  try {
    await loadAgentConfig(file, { env });
    t.fail('expected AgentConfigError');
    return [];
  } catch (e) {
    remember(e);
    if (!(e instanceof AgentConfigError)) throw e;
    t.equal(e.code, 'AGENT_CONFIG_INVALID');
    for (const p of e.problems) remember(p);
    return [...e.problems];
  }
}

/** 1-based line and column of the first `needle` in `text`. */
function at(text: string, needle: string, from = 0): { line: number; col: number } {
  const i = text.indexOf(needle, from);
  if (i < 0) throw new Error(`${needle} is not in the text`);
  const before = text.slice(0, i);
  return { line: before.split('\n').length, col: i - before.lastIndexOf('\n') };
}

/** The place of the text right after `prefix` in the first `needle`. */
function valueAt(text: string, needle: string, prefix: string): { line: number; col: number } {
  const p = at(text, needle);
  return { line: p.line, col: p.col + prefix.length };
}

function expectProblem(
  t: Test,
  problems: AgentConfigProblem[],
  code: string,
  where: { line: number; col: number } | undefined,
  message?: RegExp,
  severity: 'error' | 'warning' = 'error',
) {
  const p = problems.find((x) => x.code === code && (!where || x.line === where.line));
  if (
    !t.ok(p, `a ${code} problem${where ? ` on line ${where.line}` : ''} in ${JSON.stringify(problems, null, 1)}`) ||
    !p
  )
    return;
  if (where) t.same({ line: p.line, col: p.col }, where, `${code} at ${where.line}:${where.col}`);
  t.equal(p.severity, severity);
  if (message) t.match(p.message, message);
}

t.test('a good configuration: env, SOPS (YAML and JSON), plain and no password', async (t) => {
  const s = await setup(t);
  const yamlSops = await sopsEncrypt(
    { redis: { admin: 'r3dis-admin-pw' }, pg_unencrypted: 'cleartext-pg', port: 6379 },
    { recipients: [s.agent.recipient] },
  );
  writeFileSync(path.join(s.dir, 'secrets', 'admin.enc.yaml'), yamlSops.text);
  const jsonSops = await sopsEncrypt(
    { mysql: 'my5ql-admin-pw', list: ['a', 'b'] },
    { recipients: [s.agent.recipient], format: 'json' },
  );
  writeFileSync(path.join(s.dir, 'secrets', 'admin.enc.json'), jsonSops.text);
  const text = configText(
    s,
    [
      '  payments-pg:',
      '    url: postgres://rotor_admin@127.0.0.1:5432/postgres',
      '    password: { env: PG_ADMIN_PASSWORD }',
      '    timeout: 15s',
      '  cache:',
      '    url: rediss://rotor_admin@127.0.0.1:6379',
      '    password: { sops: secrets/admin.enc.yaml, key: redis.admin }',
      '  orders:',
      '    url: mariadb://rotor_admin@db.internal:3306/',
      '    password:',
      '      sops: secrets/admin.enc.json',
      '      key: mysql',
      '  reports:',
      '    url: mongodb://rotor_admin@h1:27017,h2:27017/app?replicaSet=rs0',
      '    password: plain-Pa55word',
      '  warehouse:',
      '    url: sqlserver://sa@127.0.0.1:1433/master',
      '',
    ].join('\n'),
  );
  const file = writeConfig(s, text);
  const config = await loadAgentConfig(file, { env: { PG_ADMIN_PASSWORD: 's3cr3t-pg-admin' } });
  t.equal(config.file, file);
  t.same(
    config.daemons.map((d) => d.origin),
    ['http://127.0.0.1:7700'],
    'one daemon',
  );
  t.equal(config.name, 'db-host-1');
  t.equal(config.keyDir, path.join(s.dir, 'keys'), 'keyDir relative to the file');
  t.equal(config.keys.recipient, s.agent.recipient);
  t.equal(config.keys.signingKey, s.agent.signingKey);
  t.equal(formatSigningKey(config.daemonSigningKey), s.daemon.signingKey);
  t.same([...config.targets.keys()], ['payments-pg', 'cache', 'orders', 'reports', 'warehouse']);
  t.same(config.targets.get('payments-pg'), {
    url: 'postgres://rotor_admin@127.0.0.1:5432/postgres',
    password: 's3cr3t-pg-admin',
    timeoutMs: 15_000,
  });
  t.same(config.targets.get('cache'), { url: 'rediss://rotor_admin@127.0.0.1:6379', password: 'r3dis-admin-pw' });
  t.same(config.targets.get('orders'), { url: 'mariadb://rotor_admin@db.internal:3306/', password: 'my5ql-admin-pw' });
  t.same(config.targets.get('reports'), {
    url: 'mongodb://rotor_admin@h1:27017,h2:27017/app?replicaSet=rs0',
    password: 'plain-Pa55word',
  });
  t.same(config.targets.get('warehouse'), { url: 'sqlserver://sa@127.0.0.1:1433/master' });
  t.same(Object.fromEntries(config.schemes), {
    'payments-pg': 'postgres',
    cache: 'rediss',
    orders: 'mariadb',
    reports: 'mongodb',
    warehouse: 'sqlserver',
  });
  t.same(Object.fromEntries(config.passwordSources), {
    'payments-pg': 'env',
    cache: 'sops',
    orders: 'sops',
    reports: 'plain',
    warehouse: 'none',
  });
  t.ok(
    schemeFitsEngine('rediss', 'redis') &&
      schemeFitsEngine('mariadb', 'mysql') &&
      schemeFitsEngine('sqlserver', 'mssql'),
  );
  t.notOk(schemeFitsEngine('postgres', 'mysql'));
  // The plain password is allowed, with a warning at its place; the file is 0600, so no more.
  t.equal(config.warnings.length, 1);
  expectProblem(
    t,
    [...config.warnings],
    'AGENT_CONFIG_PLAIN_PASSWORD',
    at(text, 'plain-Pa55word'),
    /targets\.reports\.password is written in this file/,
    'warning',
  );
  t.notMatch(JSON.stringify(config.warnings), /plain-Pa55word/);

  // Absolute paths, https, and a world-readable file with a plain password: a second warning.
  const abs = configText(
    s,
    `  reports:\n    url: mongodb+srv://rotor_admin@cluster.example.net/app\n    password: plain-Pa55word\n`,
    `daemon: https://rotor.internal:7700\nname: db-host-1\nkeyDir: ${path.join(s.dir, 'keys')}\ndaemonSigningKey: "${s.daemon.signingKey}"\n`,
  );
  const readable = await loadAgentConfig(writeConfig(s, abs, 0o644), { env: {} });
  t.equal(readable.daemons[0]!.protocol, 'https:');
  expectProblem(
    t,
    [...readable.warnings],
    'AGENT_CONFIG_FILE_READABLE',
    at(abs, 'plain-Pa55word'),
    /every user can read it \(mode 644\); run: chmod 600/,
    'warning',
  );
  // World-readable without a password in it: no warning.
  const noPassword = configText(s, '  cache:\n    url: redis://127.0.0.1:6379\n');
  t.same((await loadAgentConfig(writeConfig(s, noPassword, 0o644), { env: {} })).warnings, []);
  // No targets yet: valid, with a warning.
  const empty = configText(s, '  {}\n').replace('targets:\n  {}', 'targets: {}');
  expectProblem(
    t,
    [...(await loadAgentConfig(writeConfig(s, empty), { env: {} })).warnings],
    'AGENT_CONFIG_NO_TARGETS',
    undefined,
    /serves no database/,
    'warning',
  );
});

t.test('schema errors, with their place', async (t) => {
  const s = await setup(t);
  const text = configText(
    s,
    [
      '  payments-pg:',
      '    url: postgres://rotor_admin@127.0.0.1/postgres',
      '    pasword: { env: PG_ADMIN_PASSWORD }',
      '  cache:',
      '    url: redis://rotor_admin@127.0.0.1:6379',
      '    password: { env: REDIS_PW, sops: admin.enc.yaml, key: redis }',
      '  Orders_DB:',
      '    url: mysql://rotor_admin@db/',
      '  numbers:',
      '    url: mysql://rotor_admin@db/',
      '    password: 12345',
      '  half:',
      '    url: mysql://rotor_admin@db/',
      '    password: { sops: admin.enc.yaml }',
      '  slow:',
      '    url: mysql://rotor_admin@db/',
      '    timeout: 10 seconds',
      '',
    ].join('\n'),
    `daemon: http://127.0.0.1:7700\nname: db-host-1\nkeyDir: keys\ndaemonSigningKey: "ed25519:not-a-key"\n`,
  );
  const problems = await configFails(t, writeConfig(s, text));
  expectProblem(
    t,
    problems,
    'SCHEMA_UNKNOWN_FIELD',
    at(text, 'pasword'),
    /unknown field "pasword" in targets\.payments-pg; did you mean "password"\?/,
  );
  expectProblem(
    t,
    problems,
    'SCHEMA_INVALID',
    at(text, 'password: { env: REDIS_PW'),
    /targets\.cache\.password takes either \{ env: VAR \} or \{ sops: FILE, key: PATH \}, not both/,
  );
  expectProblem(t, problems, 'NAME_INVALID', at(text, 'Orders_DB'), /target name "Orders_DB" is not valid/);
  expectProblem(
    t,
    problems,
    'SCHEMA_TYPE',
    at(text, '12345'),
    /targets\.numbers\.password must be a string, \{ env: VAR \} or \{ sops: FILE, key: PATH \}, not a number \(quote it/,
  );
  expectProblem(
    t,
    problems,
    'SCHEMA_REQUIRED',
    at(text, 'password: { sops: admin.enc.yaml }'),
    /targets\.half\.password needs "key"/,
  );
  expectProblem(
    t,
    problems,
    'DURATION_INVALID',
    at(text, '10 seconds'),
    /targets\.slow\.timeout "10 seconds" is not valid/,
  );
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_SIGNING_KEY',
    at(text, '"ed25519:not-a-key"'),
    /as `rotor keygen` printed it for the daemon/,
  );

  const missing = 'daemon: http://127.0.0.1:7700\nname: db-host-1\nkeyDir: keys\ntargets: {}\nextra: 1\n';
  const p2 = await configFails(t, writeConfig(s, missing));
  expectProblem(t, p2, 'SCHEMA_REQUIRED', { line: 1, col: 1 }, /the configuration needs the field "daemonSigningKey"/);
  expectProblem(t, p2, 'SCHEMA_UNKNOWN_FIELD', at(missing, 'extra'), /unknown field "extra"/);
});

t.test('errors found after the schema, all reported together, with their place', async (t) => {
  const s = await setup(t);
  const stranger = await newIdentity();
  const good = await sopsEncrypt(
    { pg: 'r3dis-admin-pw', n: 5, pg_unencrypted: 'cleartext-pg', nested: { admin: 'enc-test-value' } },
    { recipients: [s.agent.recipient] },
  );
  writeFileSync(path.join(s.dir, 'secrets', 'good.enc.yaml'), good.text);
  const tampered = (
    await sopsEncrypt({ pg: 'swapped-secret', other: 'tampered-value' }, { recipients: [s.agent.recipient] })
  ).text;
  writeFileSync(path.join(s.dir, 'secrets', 'tampered.enc.yaml'), tampered.replace(/^other: .*\n/m, ''));
  writeFileSync(
    path.join(s.dir, 'secrets', 'foreign.enc.yaml'),
    (await sopsEncrypt({ pg: 'enc-test-value' }, { recipients: [stranger.recipient] })).text,
  );
  writeFileSync(path.join(s.dir, 'secrets', 'plain.yaml'), 'pg: other-secret-value\n');
  const text = configText(
    s,
    [
      '  unset-env:',
      '    url: postgres://rotor_admin@127.0.0.1/postgres',
      '    password: { env: PG_ADMIN_PASSWORD }',
      '  empty-env:',
      '    url: postgres://rotor_admin@127.0.0.1/postgres',
      '    password: { env: EMPTY_PASSWORD }',
      '  scheme:',
      '    url: postgress://rotor_admin@127.0.0.1/postgres',
      '  in-url:',
      '    url: postgres://rotor_admin:hunter2-in-url@127.0.0.1/postgres',
      '  in-query:',
      '    url: mysql://rotor_admin@db/?password=qs-pa55',
      '  in-seed-list:',
      '    url: mongodb://rotor_admin:mongo-pw-in-url@h1:1,h2:2/app',
      '  not-a-url:',
      '    url: 127.0.0.1:5432',
      '  no-host:',
      '    url: redis://',
      '  no-file:',
      '    url: redis://127.0.0.1',
      '    password: { sops: secrets/missing.enc.yaml, key: pg }',
      '  tampered:',
      '    url: redis://127.0.0.1',
      '    password: { sops: secrets/tampered.enc.yaml, key: pg }',
      '  foreign:',
      '    url: redis://127.0.0.1',
      '    password: { sops: secrets/foreign.enc.yaml, key: pg }',
      '  not-sops:',
      '    url: redis://127.0.0.1',
      '    password: { sops: secrets/plain.yaml, key: pg }',
      '  no-key:',
      '    url: redis://127.0.0.1',
      '    password: { sops: secrets/good.enc.yaml, key: nested.admn }',
      '  number:',
      '    url: redis://127.0.0.1',
      '    password: { sops: secrets/good.enc.yaml, key: n }',
      '  mapping:',
      '    url: redis://127.0.0.1',
      '    password: { sops: secrets/good.enc.yaml, key: nested }',
      '  cleartext:',
      '    url: redis://127.0.0.1',
      '    password: { sops: secrets/good.enc.yaml, key: pg_unencrypted }',
      '  zero-timeout:',
      '    url: redis://127.0.0.1',
      '    timeout: 0s',
      '  fine:',
      '    url: redis://127.0.0.1',
      '    password: { sops: secrets/good.enc.yaml, key: nested.admin }',
      '',
    ].join('\n'),
    `daemon: ftp://127.0.0.1:7700/agent\nname: db-host-1\nkeyDir: keys\ndaemonSigningKey: "${s.daemon.signingKey}"\n`,
  );
  const problems = await configFails(t, writeConfig(s, text), { EMPTY_PASSWORD: '' });
  t.ok(problems.every((p) => p.file.endsWith('agent.yaml')));
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_DAEMON_URL',
    at(text, 'ftp://'),
    /daemon must start with http:\/\/ or https:\/\//,
  );
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_ENV_UNSET',
    at(text, 'PG_ADMIN_PASSWORD'),
    /targets\.unset-env\.password: the environment variable PG_ADMIN_PASSWORD is not set for the agent/,
  );
  expectProblem(t, problems, 'AGENT_CONFIG_ENV_UNSET', at(text, 'EMPTY_PASSWORD'), /EMPTY_PASSWORD is empty/);
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_URL_SCHEME',
    at(text, 'postgress://'),
    /"postgress:\/\/", which rotor-agent does not drive; did you mean postgres:\/\/\?/,
  );
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_PASSWORD_IN_URL',
    at(text, 'postgres://rotor_admin:'),
    /targets\.in-url\.url holds a password: secrets do not go in URLs/,
  );
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_PASSWORD_IN_URL',
    at(text, 'mysql://rotor_admin@db/?password'),
    /targets\.in-query\.url holds a password/,
  );
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_PASSWORD_IN_URL',
    at(text, 'mongodb://'),
    /targets\.in-seed-list\.url holds a password/,
  );
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_URL_INVALID',
    at(text, '127.0.0.1:5432\n'),
    /targets\.not-a-url\.url is not a URL/,
  );
  expectProblem(t, problems, 'AGENT_CONFIG_URL_INVALID', at(text, 'redis://\n'), /targets\.no-host\.url names no host/);
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_SOPS_FILE_UNREADABLE',
    at(text, 'secrets/missing.enc.yaml'),
    /secrets\/missing\.enc\.yaml does not exist or cannot be read/,
  );
  expectProblem(
    t,
    problems,
    'SOPS_MAC_MISMATCH',
    at(text, 'secrets/tampered.enc.yaml'),
    /targets\.tampered\.password\.sops: secrets\/tampered\.enc\.yaml was changed after SOPS encrypted it/,
  );
  expectProblem(
    t,
    problems,
    'SOPS_NO_MATCHING_KEY',
    at(text, 'secrets/foreign.enc.yaml'),
    new RegExp(`it is encrypted to ${stranger.recipient}`),
  );
  expectProblem(t, problems, 'SOPS_NOT_SOPS', at(text, 'secrets/plain.yaml'), /no "sops" metadata/);
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_SOPS_KEY_MISSING',
    at(text, 'nested.admn'),
    /secrets\/good\.enc\.yaml has no value at "nested\.admn"; did you mean "nested\.admin"\?/,
  );
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_SOPS_VALUE_INVALID',
    valueAt(text, 'key: n }', 'key: '),
    /the value at "n" in secrets\/good\.enc\.yaml is a number; a password is a non-empty string/,
  );
  expectProblem(
    t,
    problems,
    'AGENT_CONFIG_SOPS_VALUE_INVALID',
    valueAt(text, 'key: nested }', 'key: '),
    /is a mapping/,
  );
  expectProblem(t, problems, 'AGENT_CONFIG_SOPS_VALUE_CLEARTEXT', at(text, 'pg_unencrypted'), /stored in clear/);
  expectProblem(
    t,
    problems,
    'DURATION_INVALID',
    valueAt(text, '    timeout: 0s', '    timeout: '),
    /positive duration/,
  );
  t.equal(problems.filter((p) => p.severity === 'error').length, 18, 'one error per mistake, the good target none');
  t.same(
    problems.map((p) => p.line),
    [...problems.map((p) => p.line)].sort((a, b) => a - b),
    'in file order',
  );
  t.notOk(
    problems.some((p) => p.line > at(text, '  fine:').line),
    'nothing about the good target',
  );
});

t.test("keys: missing, exposed, or the daemon key confused with the agent's", async (t) => {
  const s = await setup(t);
  const targets = '  cache:\n    url: redis://127.0.0.1\n';
  const noKeys = configText(s, targets).replace('keyDir: keys', 'keyDir: nokeys');
  expectProblem(t, await configFails(t, writeConfig(s, noKeys)), 'KEYS_MISSING', at(noKeys, 'nokeys'), /rotor keygen/);
  chmodSync(path.join(s.dir, 'keys', 'identity.age'), 0o644);
  const text = configText(s, targets);
  expectProblem(t, await configFails(t, writeConfig(s, text)), 'KEYS_PERMISSIONS', at(text, 'keys\n'), /chmod 600/);
  chmodSync(path.join(s.dir, 'keys', 'identity.age'), 0o600);
  const own = configText(s, targets).replace(s.daemon.signingKey, s.agent.signingKey);
  expectProblem(
    t,
    await configFails(t, writeConfig(s, own)),
    'AGENT_CONFIG_SIGNING_KEY',
    at(own, `"${s.agent.signingKey}"`),
    /this agent's own public key/,
  );
  // A SOPS password cannot be opened without the identity: only the keyDir error is reported.
  const sops = configText(
    s,
    '  cache:\n    url: redis://127.0.0.1\n    password: { sops: a.enc.yaml, key: k }\n',
  ).replace('keyDir: keys', 'keyDir: nokeys');
  writeFileSync(path.join(s.dir, 'a.enc.yaml'), 'k: v\n');
  t.same(
    (await configFails(t, writeConfig(s, sops))).map((p) => p.code),
    ['KEYS_MISSING'],
  );
});

t.test('files that are not a configuration', async (t) => {
  const s = await setup(t);
  expectProblem(
    t,
    await configFails(t, path.join(s.dir, 'nope.yaml')),
    'AGENT_CONFIG_UNREADABLE',
    { line: 1, col: 1 },
    /nope\.yaml cannot be read \(ENOENT\)/,
  );
  const syntax = 'daemon: http://127.0.0.1:7700\nname: [db-host-1\n';
  expectProblem(t, await configFails(t, writeConfig(s, syntax)), 'YAML_SYNTAX', undefined);
  const dup = configText(s, '  cache:\n    url: redis://127.0.0.1\n  cache:\n    url: redis://127.0.0.2\n');
  expectProblem(
    t,
    await configFails(t, writeConfig(s, dup)),
    'YAML_DUPLICATE_KEY',
    at(dup, 'cache', dup.indexOf('cache') + 1),
  );
  expectProblem(t, await configFails(t, writeConfig(s, '- a\n- b\n')), 'AGENT_CONFIG_NOT_MAPPING', { line: 1, col: 1 });
  expectProblem(t, await configFails(t, writeConfig(s, 'a: 1\n---\nb: 2\n')), 'AGENT_CONFIG_NOT_MAPPING', {
    line: 1,
    col: 1,
  });
});

t.test('tls: a CA file, pins, both; read and checked with their place', async (t) => {
  const s = await setup(t);
  const certs = makeTls(t);
  mkdirSync(path.join(s.dir, 'tls'));
  writeFileSync(path.join(s.dir, 'tls', 'ca.crt'), readFileSync(certs.ca.cert));
  const head = (daemon: string, tls: string) =>
    `daemon: ${daemon}\n${tls}name: db-host-1\nkeyDir: keys\ndaemonSigningKey: "${s.daemon.signingKey}"\n`;
  const targets = '  cache:\n    url: redis://127.0.0.1\n';
  const load = (text: string) => loadAgentConfig(writeConfig(s, text), { env: {} });

  // Good: a CA (relative to the file), a pin, a list of pins, both.
  const withCa = await load(configText(s, targets, head('https://rotor.internal:7700', 'tls: { ca: tls/ca.crt }\n')));
  t.equal(withCa.tls?.caFile, 'tls/ca.crt', 'the CA file as written');
  t.equal(withCa.tls?.ca?.trim(), readFileSync(certs.ca.cert, 'utf8').trim(), 'its certificate, read');
  t.equal(withCa.tls?.pins, undefined, 'no pin');
  const pin = certs.server.pin;
  const pinned = await load(configText(s, targets, head('https://10.0.0.5:7700', `tls:\n  pin: "${pin}"\n`)));
  t.same(pinned.tls, { pins: [pin] }, 'a pin alone');
  const both = await load(
    configText(
      s,
      targets,
      head('https://10.0.0.5:7700', `tls:\n  ca: tls/ca.crt\n  pin: ["${pin}", "${certs.ca.pin}"]\n`),
    ),
  );
  t.same(both.tls?.pins, [pin, certs.ca.pin], 'a list of pins, with a CA');
  t.equal(
    (await load(configText(s, targets, head('https://rotor.internal:7700', '')))).tls,
    undefined,
    'https:// without tls: the system CAs',
  );

  // The schema: a pin's spelling, an empty mapping, unknown fields.
  const schema = configText(
    s,
    targets,
    head(
      'https://rotor.internal:7700',
      [
        'tls:',
        '  pin:',
        `    - "${pin}"`,
        `    - "sha256//${pin.slice(7)}"`,
        `    - "${pin.slice(7)}"`,
        '    - 42',
        '  pins: x',
        '',
      ].join('\n'),
    ),
  );
  const p1 = await configFails(t, writeConfig(s, schema));
  expectProblem(
    t,
    p1,
    'AGENT_CONFIG_TLS_PIN',
    at(schema, '"sha256//'),
    /tls\.pin\.1 .* is not a pin \(this is curl's spelling, sha256\/\/: rotor writes one slash\)/,
  );
  expectProblem(
    t,
    p1,
    'AGENT_CONFIG_TLS_PIN',
    at(schema, `"${pin.slice(7)}"`),
    /tls\.pin\.2 .* is not a pin \(prefix it with "sha256\/"\)/,
  );
  expectProblem(
    t,
    p1,
    'AGENT_CONFIG_TLS_PIN',
    // Whole lines or punctuation, never a bare "42": the random keys and temporary paths above may hold it.
    valueAt(schema, '    - 42', '    - '),
    /tls\.pin\.3 must be a pin "sha256\/BASE64" \(or a list of them\), not a number/,
  );
  expectProblem(
    t,
    p1,
    'SCHEMA_UNKNOWN_FIELD',
    valueAt(schema, '  pins:', '  '),
    /unknown field "pins" in tls; did you mean "pin"\?/,
  );
  t.equal(p1.length, 4, 'one problem each');
  const empty = configText(s, targets, head('https://rotor.internal:7700', 'tls: {}\n'));
  expectProblem(
    t,
    await configFails(t, writeConfig(s, empty)),
    'SCHEMA_REQUIRED',
    at(empty, 'tls: {}'),
    /tls needs ca .*, pin .*, or both/,
  );
  const noPins = configText(s, targets, head('https://rotor.internal:7700', 'tls: { pin: [] }\n'));
  expectProblem(
    t,
    await configFails(t, writeConfig(s, noPins)),
    'AGENT_CONFIG_TLS_PIN',
    at(noPins, '[]'),
    /not an empty list/,
  );
  const number = configText(s, targets, head('https://rotor.internal:7700', 'tls: { pin: 12 }\n'));
  expectProblem(
    t,
    await configFails(t, writeConfig(s, number)),
    'AGENT_CONFIG_TLS_PIN',
    valueAt(number, 'tls: { pin: 12 }', 'tls: { pin: '),
    /not a number/,
  );

  // After the schema, together: tls over http://, a CA file missing, not PEM, or with a broken certificate.
  const clear = configText(s, targets, head('http://127.0.0.1:7700', 'tls: { ca: tls/missing.crt }\n'));
  const p2 = await configFails(t, writeConfig(s, clear));
  expectProblem(
    t,
    p2,
    'AGENT_CONFIG_TLS_CLEAR',
    at(clear, 'tls:'),
    /tls is for an https:\/\/ daemon, and daemon is http:\/\/127\.0\.0\.1:7700/,
  );
  expectProblem(
    t,
    p2,
    'AGENT_CONFIG_TLS_CA_UNREADABLE',
    at(clear, 'tls/missing.crt'),
    /tls\.ca: tls\/missing\.crt cannot be read \(ENOENT; looked for .*tls\/missing\.crt/,
  );
  writeFileSync(path.join(s.dir, 'tls', 'key.pem'), readFileSync(certs.ca.key));
  const notPem = configText(s, targets, head('https://rotor.internal:7700', 'tls: { ca: tls/key.pem }\n'));
  expectProblem(
    t,
    await configFails(t, writeConfig(s, notPem)),
    'AGENT_CONFIG_TLS_CA_INVALID',
    at(notPem, 'tls/key.pem'),
    /holds no PEM certificate/,
  );
  writeFileSync(
    path.join(s.dir, 'tls', 'broken.crt'),
    `${readFileSync(certs.ca.cert, 'utf8')}-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n`,
  );
  const broken = configText(s, targets, head('https://rotor.internal:7700', 'tls: { ca: tls/broken.crt }\n'));
  expectProblem(
    t,
    await configFails(t, writeConfig(s, broken)),
    'AGENT_CONFIG_TLS_CA_INVALID',
    at(broken, 'tls/broken.crt'),
    /certificate 2 of 2 in tls\/broken\.crt cannot be read/,
  );
  const dirAsCa = configText(s, targets, head('https://rotor.internal:7700', 'tls: { ca: tls }\n'));
  expectProblem(
    t,
    await configFails(t, writeConfig(s, dirAsCa)),
    'AGENT_CONFIG_TLS_CA_UNREADABLE',
    at(dirAsCa, 'tls }'),
    /not a file/,
  );
  // No key text in any of them.
  t.notOk(
    seenErrors.some((m) => m.includes(readFileSync(certs.ca.key, 'utf8').split('\n')[1]!)),
    'no line of a key file in an error',
  );
});

t.test('no decrypted value, password or cleartext secret is in any error seen above', async (t) => {
  t.ok(seenErrors.length > 60, `${seenErrors.length} error texts checked`);
  for (const secret of SECRET_VALUES) {
    const hit = seenErrors.find((m) => m.includes(secret));
    t.equal(hit, undefined, `"${secret}" is in no error`);
  }
  // Nor any ciphertext: errors name places, not contents.
  t.notOk(
    seenErrors.some((m) => /ENC\[AES256_GCM,data:/.test(m)),
    'no ENC[...] in errors',
  );
});
