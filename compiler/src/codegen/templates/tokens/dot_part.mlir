        %crem = arith.constant {{rem}} : index
        %cpart = arith.constant {{start}} : index
        %qp = arith.addi %lane, %cpart : index
        %inp = arith.cmpi ult, %lane, %crem : index
        %part:{{n}} = scf.if %inp -> ({{types}}) {
{{rounds}}
          scf.yield {{next}} : {{types}}
        } else {
          scf.yield {{accs}} : {{types}}
        }
