{{sums}}
          %lane0 = arith.cmpi eq, %lane, %c0 : index
          scf.if %lane0 {
{{rows}}
          }
