        %cl = arith.constant {{start}} : index
        %ql = arith.addi %lane, %cl : index
        %tail:{{n}} = scf.execute_region -> ({{types}}) {
{{rounds}}
          scf.yield {{next}} : {{types}}
        }
